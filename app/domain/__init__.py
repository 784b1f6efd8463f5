"""The ground floor: the relay's data types, limits and input rules, imported by every layer.

- `models.py`: what passes between the routes, the sources, the store and delivery
  (`NewUpdate`, `Delivery`, `Claim`, statuses).
- `rules.py`: what a company id, a property name and a number from input may be.
- `errors.py`: the domain errors; `app/errors.py` maps each to its HTTP answer, in one place.

Nothing here imports anything else of the app.
"""
