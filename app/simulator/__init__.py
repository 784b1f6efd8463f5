"""A local Userpilot simulator for end-to-end tests, demos and benchmarks of the relay.

Run it with `python -m app.simulator --api-key KEY`, embed it with `create_simulator_app`, or
drive it from tests with `app.simulator.process.SimulatorProcess`.
"""

from app.simulator.app import create_simulator_app
from app.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]
