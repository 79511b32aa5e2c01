"""collab-tcp's plugin: the ``poc`` and ``prod`` environments, the ``tcp`` backend, and the
``provision``, ``server``, ``site``, ``submit`` and ``status`` commands."""

from collab_core import hookimpl


@hookimpl
def collab_register_environments(register):
    from .envs import PocEnv, ProdEnv

    register("poc", PocEnv)
    register("prod", ProdEnv)


@hookimpl
def collab_register_backends(register):
    from .rpc import TcpBackend

    register("tcp", TcpBackend, apis=("collab",), settings=("poc", "prod"))


@hookimpl
def collab_register_commands(register):
    from .commands import tcp_commands
    from .kit import provision_command

    register(provision_command())
    for command in tcp_commands():
        register(command)
