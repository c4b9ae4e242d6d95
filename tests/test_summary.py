"""Summary totals equal torchinfo's; the seed's ResNet-18 numbers exactly."""
import pytest
import torch
import torchvision
from torch import nn
from torchinfo import summary

from reportgen.figures.summary import mult_adds_text
from reportgen.stages.summary import compute_summary


def test_resnet18_matches_the_seed_table_exactly():
    result = compute_summary(torchvision.models.resnet18().eval(), (3, 224, 224), depth=3)
    t = result.totals
    assert (t.total_params, t.trainable_params, t.non_trainable_params) == (11_689_512, 11_689_512, 0)
    assert t.total_mult_adds == 1_814_083_944 and mult_adds_text(t.total_mult_adds) == "1.81 G"
    assert (t.input_size_mb, t.forward_backward_pass_size_mb, t.params_size_mb, t.estimated_total_size_mb) == (
        0.60, 39.75, 46.76, 87.11)
    by_name = {r.name: r for r in result.rows}
    assert by_name["conv1"].num_params == 9_408 and by_name["conv1"].output_shape == [1, 64, 112, 112]
    assert by_name["layer2.0.downsample"].num_params == 8_448  # a container at the maximum depth: its total
    assert by_name["layer4.1.conv2"].kernel_size == [3, 3]
    assert by_name["fc"].num_params == 513_000 and by_name["fc"].output_shape == [1, 1000]
    # the seed shows each BasicBlock's ReLU twice (called twice): 3-3 and 3-6
    assert [r.depth_index for r in result.rows if r.name == "layer1.0.relu"] == [3, 6]


class Tied(nn.Module):
    """A custom module with a shared (tied) layer called twice and a frozen part."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        for p in self.stem[0].parameters():
            p.requires_grad_(False)

    def forward(self, x):
        x = self.stem(x)
        x = self.shared(self.shared(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("build, size", [
    (torchvision.models.resnet18, 64),
    (torchvision.models.vgg11, 64),
    (torchvision.models.mobilenet_v3_small, 64),
    (torchvision.models.densenet121, 64),
    (Tied, 20),
])
def test_totals_equal_torchinfo(build, size):
    torch.manual_seed(0)
    model = build().eval()
    ours = compute_summary(model, (3, size, size), depth=3).totals
    ref = summary(model, input_size=(1, 3, size, size), verbose=0, depth=3)
    assert ours.total_params == ref.total_params
    assert ours.trainable_params == ref.trainable_params
    assert ours.total_mult_adds == ref.total_mult_adds
    assert ours.input_size_mb == round(ref.total_input / 1e6, 2)
    assert ours.forward_backward_pass_size_mb == round(ref.total_output_bytes / 1e6, 2)
    assert ours.params_size_mb == round(ref.total_param_bytes / 1e6, 2)
    assert ours.estimated_total_size_mb == round(
        (ref.total_input + ref.total_output_bytes + ref.total_param_bytes) / 1e6, 2)
    assert not model.training  # mode restored


def test_rows_sum_to_totals_at_full_depth():
    model = Tied().eval()
    result = compute_summary(model, (3, 20, 20), depth=10)
    leaves = [r for r in result.rows if r.is_leaf and not r.recursive]
    assert sum(r.num_params for r in leaves) == result.totals.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r.mult_adds for r in result.rows if r.is_leaf) == result.totals.total_mult_adds
    assert result.totals.non_trainable_params == 4 * 3 * 3 * 3 + 4
    assert [r.recursive for r in result.rows if r.name == "shared"] == [False, True]
    assert {r.name: r.trainable for r in result.rows}["stem.0"] == "no"
    assert {r.name: r.trainable for r in result.rows}["stem"] == "partial"


def test_mult_adds_units():
    assert mult_adds_text(1_814_083_944) == "1.81 G"
    assert mult_adds_text(56_000_000) == "56.00 M"
    assert mult_adds_text(2_500_000_000_000) == "2.50 T"


def test_the_flop_total_counted_on_shapes_alone_equals_a_real_forward_counted():
    """Meta tensors give the count of a real forward that takes the explicit paths (with gradients on,
    nn.MultiheadAttention does not fuse its matmuls into one kernel the counter cannot see)."""
    from torch.utils.flop_counter import FlopCounterMode

    from reportgen.stages.summary import count_flops

    for model, shape in ((torchvision.models.resnet18(num_classes=10).eval(), (1, 3, 64, 64)),
                         (torchvision.models.vit_b_16(image_size=32, num_classes=10).eval(), (1, 3, 32, 32))):
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), \
                FlopCounterMode(display=False) as counter:
            model(torch.zeros(shape))
        assert count_flops(model, shape) == counter.get_total_flops() > 0


def test_a_model_without_attention_gets_no_flop_count_but_says_why():
    """torchinfo misses no matmul of a CNN: the summary skips the FLOP counter's forward and says so."""
    from reportgen.stages.summary import compute_summary

    result = compute_summary(torchvision.models.resnet18(num_classes=10).eval(), (3, 64, 64), depth=1)
    assert result.flops is None and f"{2 * result.totals.total_mult_adds:,} FLOPs" in result.flops_note
    for model in (torchvision.models.vit_b_16(image_size=32, num_classes=10),  # attention
                  nn.Sequential(nn.Flatten(2), nn.Linear(64, 5))):  # a linear layer over 3 vectors an image
        result = compute_summary(model.eval(), (3, 8, 8), depth=1) if isinstance(model, nn.Sequential) else \
            compute_summary(model.eval(), (3, 32, 32), depth=1)
        assert result.flops is not None and result.flops > 0
