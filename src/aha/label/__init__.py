"""The ranking app: people rank model outputs in a browser (FastAPI + SQLite); ``aha label export`` writes the
K-way ranking format (:mod:`aha.data.preferences`) that ``stage: reward_model`` trains on."""
