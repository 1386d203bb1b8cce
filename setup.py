"""Build hooks: generate the gRPC/protobuf Python stubs from protos/ at install or build time, and
compile the audit trail's native body joiner.

The stubs land in service/risklens/v1/ (git-ignored) so that editable and regular installs
both import them as ``risklens.v1.risklens_pb2``; they are never committed or hand-edited.
The joiner (``risklens.audit._join``, one C file) is optional: where it cannot be compiled the
install goes on and ``risklens.audit._body`` joins the same bytes in Python.
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    from grpc_tools import protoc  # build requirement (pyproject.toml)

    proto_root = ROOT / "protos"
    out = ROOT / "service"
    include = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")


class BuildWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


class DevelopWithStubs(develop):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    cmdclass={"build_py": BuildWithStubs, "develop": DevelopWithStubs},
    ext_modules=[Extension("risklens.audit._join", ["service/risklens/audit/_join.c"], optional=True)],
)
