"""A third-party maia plugin: a tiny convolutional target and a tool that asks the backbone."""

from maia_core import hookimpl
from maia_core.transcript import Message


@hookimpl
def register_targets(register):
    register("toynet", make_toynet, help="A tiny two-layer conv net with fixed random weights")


@hookimpl
def register_tools(register):
    register("caption", Caption, help="Ask the describer backbone about a text")


def make_toynet(arg, *, device="auto", precision="fp32", **options):
    import sys
    from collections import OrderedDict

    import torch

    from maia_core.torch_runtime.target import Preprocess, TorchTarget

    print("toynet loaded", file=sys.stderr)  # the tests count loads in the worker log
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        OrderedDict(
            conv1=torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            relu1=torch.nn.ReLU(),
            conv2=torch.nn.Conv2d(8, 4, 3, stride=2, padding=1),
            relu2=torch.nn.ReLU(),
        )
    )
    return TorchTarget(
        "toynet", model, Preprocess(size=64, crop_pct=1.0), device=device, precision=precision
    )


class Caption:
    def __init__(self, ctx, **options):
        self.ctx = ctx

    def __call__(self, text: str) -> str:
        """Ask the describer backbone about ``text`` and return its answer.

        Example:
            print(tools.caption("hello"))
        """
        return self.ctx.ask_backbone([Message.of("user", text)])
