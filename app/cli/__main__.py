"""`python -m app.cli`: the `userpilot-relay` command."""

from app.cli import main

raise SystemExit(main())
