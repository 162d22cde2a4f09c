"""A third-party maia plugin: a tiny convolutional target, a tool that asks the backbone, and a
task (is a unit driven by bright or by dark images?)."""

from maia_core import hookimpl
from maia_core.task import Answer, IncompleteAnswer, Task, answer_sections, first_line
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


@hookimpl
def register_tasks(register):
    register("polarity", Polarity, help="Does a unit prefer bright or dark images?")


class Polarity(Task):
    """A third party's task: is the unit driven by bright or by dark images?"""

    answer_format = "[POLARITY]: <bright or dark>\n[LABEL]: <a short label>"
    index_columns = ("Polarity",)

    def system(self, target, subject, thresholds):
        return target.system(subject.unit, threshold=thresholds[0])

    def measure(self, system, images):
        return system.call_neuron(images)[0]

    def parse_answer(self, text):
        found = answer_sections(text, ("POLARITY", "LABEL"))
        if found is None:
            return None
        polarity = first_line(found["POLARITY"]).lower()
        if polarity not in ("bright", "dark"):
            raise IncompleteAnswer(f"[POLARITY] is bright or dark, not {polarity!r}.")
        return Answer(found["POLARITY"], first_line(found["LABEL"]), {"polarity": polarity})

    def index_cells(self, row):
        return [row.get("answer", {}).get("polarity", "")]

    def predictions(self, answer, attrs, k):
        bright, dark = ["a plain white background"] * k, ["a plain black background"] * k
        return (bright, dark) if answer.fields["polarity"] == "bright" else (dark, bright)
