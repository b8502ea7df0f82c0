"""Docker sandboxes that run cell code isolated from the host."""

from wflo_jupyter.sandbox.docker_runner import DockerSandbox, SandboxRun, connect_docker

__all__ = ["DockerSandbox", "SandboxRun", "connect_docker"]
