"""Scale-out on Ray (``distributed.backend: ray``): rollout workers as Ray actors behind the same
:class:`~aha.rollout.Engine` contract the in-process sampler implements (:mod:`aha.distributed.ray_engine`).
Nothing here is imported unless the config asks for Ray."""
