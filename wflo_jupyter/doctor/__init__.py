"""``wflo doctor``'s probes: each looks at one thing on this machine (the Docker engine,
bubblewrap, the runtime image, each engine, the host) within a time limit and hands what
it saw to the pure rules in ``core.doctor_rules``; ``run.run_doctor`` puts it together."""

from wflo_jupyter.doctor.run import run_doctor

__all__ = ["run_doctor"]
