"""Convolution layer shapes: every distinct conv layer of ResNet-50, and DeepBench's conv tables.

Names are ``<suite>/<layer>``::

    conv_layer("resnet50/res2_3x3", batch=32)   -> ConvProblem(N=32, C=64, 56x56, K=64, 3x3, pad 1)
    conv_layer("deepbench-training/017")        -> the 18th row of DeepBench's training table
    list_layers("resnet50")

ResNet-50 (He et al. 2016) in torchvision's layout ("v1.5": the stride-2 of a stage's first block
sits on the 3x3, not on the first 1x1).  Stage ``resN`` (N = 2..5, torchvision layer1..4) has
bottleneck width ``w`` = 64, 128, 256, 512 and output 4w channels; its first block reads the
previous stage's output (64 channels for res2, 2w otherwise) and has a 1x1 projection shortcut.
Layer names, by role:

    conv1_7x7        the stem, 3 -> 64, stride 2, pad 3, 224 -> 112
    resN_1x1a_first  first block's reduce 1x1 (C_in -> w), at the stage's input size
    resN_1x1a        reduce 1x1 of the other blocks (4w -> w)
    resN_3x3_s2      first block's 3x3, stride 2 (res3..res5; res2's is the same as res2_3x3)
    resN_3x3         3x3 (w -> w, pad 1, stride 1)
    resN_1x1b        expand 1x1 (w -> 4w)
    resN_proj        projection shortcut 1x1 (C_in -> 4w), stride 2 in res3..res5
    res2_1x1         alias of res2_1x1b (64 -> 256 at 56x56): the 1x1 shape that runs most often
                     in res2 (three expands plus the projection, which has the same shape)

24 roles; 23 distinct shapes (res2_proj and res2_1x1b coincide).  ``batch`` defaults to 32.

DeepBench: the three tables of baidu-research/DeepBench ``code/kernels/conv_problems.h``
(commit da81ba7, the DEEPBENCH_COMMIT of microbench/suites/__init__.py), carried over as data, one tuple per row, in the header's field order

    (W, H, C, N, K, S, R, pad_w, pad_h, stride_w, stride_h)

Note S (filter width) comes before R (filter height): the header's comment reads "w, h, c, n, k,
filter_w(s), filter_h(r), pad_w, pad_h, wstride, hstride", and its benchmark unpacks
``std::tie(w, h, c, n, k, s, r, ...)``, so the speech layers' 20x5 filters are 20 wide, 5 high.
Rows are named by their index in the table (``deepbench-training/000``...); the tables repeat a
few rows, and the names keep them apart so a run covers the table exactly.  ``batch=None`` keeps
the table's N.  The one row the header comments out (an ARM failure) is left out as well.
Every row is a valid ConvProblem (tests check this), the odd ones included: the 7x7x2048 1x1 rows
with pad 3 and stride 2 give a 7x7 output whose border sees only padding (y = 0 there, bias off).
"""
from __future__ import annotations

import difflib

from kernels.conv.geometry import ConvProblem
from kernels.errors import BadInput

RESNET50_BATCH = 32

# -- ResNet-50 ----------------------------------------------------------------------------------


def _resnet50() -> dict:
    """name -> ConvProblem keyword arguments except N."""
    layers = {"conv1_7x7": dict(C=3, H=224, W=224, K=64, R=7, S=7, stride=2, pad=3)}
    size, c_in = 56, 64                                   # after the stem's 3x3/2 max-pool
    for stage, width in zip((2, 3, 4, 5), (64, 128, 256, 512)):
        out = 4 * width
        s = 1 if stage == 2 else 2                        # v1.5: stride on the first 3x3
        size_out = size // s
        one = dict(R=1, S=1)
        three = dict(R=3, S=3, pad=1)
        layers[f"res{stage}_1x1a_first"] = dict(C=c_in, H=size, W=size, K=width, **one)
        if s == 2:
            layers[f"res{stage}_3x3_s2"] = dict(C=width, H=size, W=size, K=width, stride=2, **three)
        layers[f"res{stage}_proj"] = dict(C=c_in, H=size, W=size, K=out, stride=s, **one)
        layers[f"res{stage}_1x1a"] = dict(C=out, H=size_out, W=size_out, K=width, **one)
        layers[f"res{stage}_3x3"] = dict(C=width, H=size_out, W=size_out, K=width, **three)
        layers[f"res{stage}_1x1b"] = dict(C=width, H=size_out, W=size_out, K=out, **one)
        size, c_in = size_out, out
    return layers


RESNET50 = _resnet50()
RESNET50_ALIASES = {"res2_1x1": "res2_1x1b"}

# -- DeepBench ----------------------------------------------------------------------------------
# Source: https://github.com/baidu-research/DeepBench, code/kernels/conv_problems.h (commit da81ba7).
# Field order (the header's): W, H, C, N, K, S, R, pad_w, pad_h, stride_w, stride_h.

_TRAINING_SET = (
    (700, 161, 1, 4, 32, 20, 5, 0, 0, 2, 2), (700, 161, 1, 8, 32, 20, 5, 0, 0, 2, 2), (700, 161, 1, 16, 32, 20, 5, 0, 0, 2, 2),
    (700, 161, 1, 32, 32, 20, 5, 0, 0, 2, 2), (341, 79, 32, 4, 32, 10, 5, 0, 0, 2, 2), (341, 79, 32, 8, 32, 10, 5, 0, 0, 2, 2),
    (341, 79, 32, 16, 32, 10, 5, 0, 0, 2, 2), (341, 79, 32, 32, 32, 10, 5, 0, 0, 2, 2), (480, 48, 1, 16, 16, 3, 3, 1, 1, 1, 1),
    (240, 24, 16, 16, 32, 3, 3, 1, 1, 1, 1), (120, 12, 32, 16, 64, 3, 3, 1, 1, 1, 1), (60, 6, 64, 16, 128, 3, 3, 1, 1, 1, 1),
    (108, 108, 3, 8, 64, 3, 3, 1, 1, 2, 2), (54, 54, 64, 8, 64, 3, 3, 1, 1, 1, 1), (27, 27, 128, 8, 128, 3, 3, 1, 1, 1, 1),
    (14, 14, 128, 8, 256, 3, 3, 1, 1, 1, 1), (7, 7, 256, 8, 512, 3, 3, 1, 1, 1, 1), (224, 224, 3, 8, 64, 3, 3, 1, 1, 1, 1),
    (112, 112, 64, 8, 128, 3, 3, 1, 1, 1, 1), (56, 56, 128, 8, 256, 3, 3, 1, 1, 1, 1), (28, 28, 256, 8, 512, 3, 3, 1, 1, 1, 1),
    (14, 14, 512, 8, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 8, 512, 3, 3, 1, 1, 1, 1), (224, 224, 3, 16, 64, 3, 3, 1, 1, 1, 1),
    (112, 112, 64, 16, 128, 3, 3, 1, 1, 1, 1), (56, 56, 128, 16, 256, 3, 3, 1, 1, 1, 1), (28, 28, 256, 16, 512, 3, 3, 1, 1, 1, 1),
    (14, 14, 512, 16, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 16, 512, 3, 3, 1, 1, 1, 1), (224, 224, 3, 16, 64, 7, 7, 3, 3, 2, 2),
    (28, 28, 192, 16, 32, 5, 5, 2, 2, 1, 1), (28, 28, 192, 16, 64, 1, 1, 0, 0, 1, 1), (14, 14, 512, 16, 48, 5, 5, 2, 2, 1, 1),
    (14, 14, 512, 16, 192, 1, 1, 0, 0, 1, 1), (7, 7, 832, 16, 256, 1, 1, 0, 0, 1, 1), (7, 7, 832, 16, 128, 5, 5, 2, 2, 1, 1),
    (56, 56, 64, 8, 64, 3, 3, 1, 1, 1, 1), (56, 56, 64, 8, 256, 1, 1, 0, 0, 2, 2), (28, 28, 128, 8, 128, 3, 3, 1, 1, 1, 1),
    (28, 28, 128, 8, 512, 1, 1, 0, 0, 2, 2), (14, 14, 256, 8, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 8, 256, 3, 3, 1, 1, 1, 1),
    (14, 14, 256, 8, 1024, 1, 1, 0, 0, 2, 2), (7, 7, 512, 8, 512, 1, 1, 0, 0, 1, 1), (7, 7, 2048, 8, 512, 1, 1, 3, 3, 2, 2),
    (56, 56, 64, 16, 64, 3, 3, 1, 1, 1, 1), (56, 56, 64, 16, 256, 1, 1, 0, 0, 2, 2), (28, 28, 128, 16, 128, 3, 3, 1, 1, 1, 1),
    (28, 28, 128, 16, 512, 1, 1, 0, 0, 2, 2), (14, 14, 256, 16, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 16, 256, 3, 3, 1, 1, 1, 1),
    (14, 14, 256, 16, 1024, 1, 1, 0, 0, 2, 2), (7, 7, 512, 16, 512, 1, 1, 0, 0, 1, 1), (7, 7, 2048, 16, 512, 1, 1, 3, 3, 2, 2),
    (700, 161, 1, 16, 64, 5, 5, 1, 1, 2, 2), (350, 80, 64, 16, 64, 3, 3, 1, 1, 1, 1), (350, 80, 64, 16, 128, 5, 5, 1, 1, 2, 2),
    (175, 40, 128, 16, 128, 3, 3, 1, 1, 1, 1), (175, 40, 128, 16, 256, 5, 5, 1, 1, 2, 2), (84, 20, 256, 16, 256, 3, 3, 1, 1, 1, 1),
    (84, 20, 256, 16, 512, 5, 5, 1, 1, 2, 2), (42, 10, 512, 16, 512, 3, 3, 1, 1, 1, 1), (112, 112, 64, 8, 64, 1, 1, 0, 0, 1, 1),
    (56, 56, 64, 8, 256, 1, 1, 0, 0, 1, 1), (56, 56, 256, 8, 64, 1, 1, 0, 0, 1, 1), (56, 56, 256, 8, 128, 1, 1, 0, 0, 2, 2),
    (28, 28, 128, 8, 512, 1, 1, 0, 0, 1, 1), (28, 28, 512, 8, 128, 1, 1, 0, 0, 1, 1), (28, 28, 512, 8, 256, 1, 1, 0, 0, 2, 2),
    (14, 14, 256, 8, 1024, 1, 1, 0, 0, 1, 1), (28, 28, 512, 8, 1024, 1, 1, 0, 0, 2, 2), (14, 14, 1024, 8, 256, 1, 1, 0, 0, 1, 1),
    (14, 14, 256, 8, 1024, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 8, 512, 1, 1, 0, 0, 2, 2), (7, 7, 512, 8, 512, 3, 3, 1, 1, 1, 1),
    (7, 7, 512, 8, 2048, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 8, 2048, 1, 1, 0, 0, 2, 2), (7, 7, 2048, 8, 512, 1, 1, 0, 0, 1, 1),
    (112, 112, 64, 16, 64, 1, 1, 0, 0, 1, 1), (56, 56, 64, 16, 256, 1, 1, 0, 0, 1, 1), (56, 56, 256, 16, 64, 1, 1, 0, 0, 1, 1),
    (56, 56, 256, 16, 128, 1, 1, 0, 0, 2, 2), (28, 28, 128, 16, 512, 1, 1, 0, 0, 1, 1), (28, 28, 512, 16, 128, 1, 1, 0, 0, 1, 1),
    (28, 28, 512, 16, 256, 1, 1, 0, 0, 2, 2), (14, 14, 256, 16, 1024, 1, 1, 0, 0, 1, 1), (28, 28, 512, 16, 1024, 1, 1, 0, 0, 2, 2),
    (14, 14, 1024, 16, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 16, 1024, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 16, 512, 1, 1, 0, 0, 2, 2),
    (7, 7, 512, 16, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 16, 2048, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 16, 2048, 1, 1, 0, 0, 2, 2),
    (7, 7, 2048, 16, 512, 1, 1, 0, 0, 1, 1),
)

_INFERENCE_SERVER_SET = (
    (700, 161, 1, 1, 32, 20, 5, 0, 0, 2, 2), (700, 161, 1, 2, 32, 20, 5, 0, 0, 2, 2), (700, 161, 1, 4, 32, 20, 5, 0, 0, 2, 2),
    (341, 79, 32, 1, 32, 10, 5, 0, 0, 2, 2), (341, 79, 32, 2, 32, 10, 5, 0, 0, 2, 2), (341, 79, 32, 4, 32, 10, 5, 0, 0, 2, 2),
    (480, 48, 1, 1, 16, 3, 3, 1, 1, 1, 1), (240, 24, 16, 1, 32, 3, 3, 1, 1, 1, 1), (120, 12, 32, 1, 64, 3, 3, 1, 1, 1, 1),
    (60, 6, 64, 1, 128, 3, 3, 1, 1, 1, 1), (108, 108, 3, 1, 64, 3, 3, 1, 1, 2, 2), (54, 54, 64, 1, 64, 3, 3, 1, 1, 1, 1),
    (27, 27, 128, 1, 128, 3, 3, 1, 1, 1, 1), (14, 14, 128, 1, 256, 3, 3, 1, 1, 1, 1), (7, 7, 256, 1, 512, 3, 3, 1, 1, 1, 1),
    (224, 224, 3, 1, 64, 3, 3, 1, 1, 1, 1), (112, 112, 64, 1, 128, 3, 3, 1, 1, 1, 1), (56, 56, 128, 1, 256, 3, 3, 1, 1, 1, 1),
    (28, 28, 256, 1, 512, 3, 3, 1, 1, 1, 1), (14, 14, 512, 1, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 1, 512, 3, 3, 1, 1, 1, 1),
    (224, 224, 3, 2, 64, 3, 3, 1, 1, 1, 1), (112, 112, 64, 2, 128, 3, 3, 1, 1, 1, 1), (56, 56, 128, 2, 256, 3, 3, 1, 1, 1, 1),
    (28, 28, 256, 2, 512, 3, 3, 1, 1, 1, 1), (14, 14, 512, 2, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 2, 512, 3, 3, 1, 1, 1, 1),
    (224, 224, 3, 1, 64, 7, 7, 3, 3, 2, 2), (28, 28, 192, 1, 32, 5, 5, 2, 2, 1, 1), (28, 28, 192, 1, 64, 1, 1, 0, 0, 1, 1),
    (14, 14, 512, 1, 48, 5, 5, 2, 2, 1, 1), (14, 14, 512, 1, 192, 1, 1, 0, 0, 1, 1), (7, 7, 832, 1, 256, 1, 1, 0, 0, 1, 1),
    (7, 7, 832, 1, 128, 5, 5, 2, 2, 1, 1), (224, 224, 3, 2, 64, 7, 7, 3, 3, 2, 2), (28, 28, 192, 2, 32, 5, 5, 2, 2, 1, 1),
    (28, 28, 192, 2, 64, 1, 1, 0, 0, 1, 1), (14, 14, 512, 2, 48, 5, 5, 2, 2, 1, 1), (14, 14, 512, 2, 192, 1, 1, 0, 0, 1, 1),
    (7, 7, 832, 2, 256, 1, 1, 0, 0, 1, 1), (7, 7, 832, 2, 128, 5, 5, 2, 2, 1, 1), (56, 56, 64, 1, 64, 3, 3, 1, 1, 1, 1),
    (56, 56, 64, 1, 256, 1, 1, 0, 0, 2, 2), (28, 28, 128, 1, 128, 3, 3, 1, 1, 1, 1), (28, 28, 128, 1, 512, 1, 1, 0, 0, 2, 2),
    (14, 14, 256, 1, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 1, 256, 3, 3, 1, 1, 1, 1), (14, 14, 256, 1, 1024, 1, 1, 0, 0, 2, 2),
    (7, 7, 512, 1, 512, 1, 1, 0, 0, 1, 1), (7, 7, 2048, 1, 512, 1, 1, 3, 3, 2, 2), (56, 56, 64, 2, 64, 3, 3, 1, 1, 1, 1),
    (56, 56, 64, 2, 256, 1, 1, 0, 0, 2, 2), (28, 28, 128, 2, 128, 3, 3, 1, 1, 1, 1), (28, 28, 128, 2, 512, 1, 1, 0, 0, 2, 2),
    (14, 14, 256, 2, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 2, 256, 3, 3, 1, 1, 1, 1), (14, 14, 256, 2, 1024, 1, 1, 0, 0, 2, 2),
    (7, 7, 512, 2, 512, 1, 1, 0, 0, 1, 1), (7, 7, 2048, 2, 512, 1, 1, 3, 3, 2, 2), (700, 161, 1, 1, 64, 5, 5, 1, 1, 2, 2),
    (350, 80, 64, 1, 64, 3, 3, 1, 1, 1, 1), (350, 80, 64, 1, 128, 5, 5, 1, 1, 2, 2), (175, 40, 128, 1, 128, 3, 3, 1, 1, 1, 1),
    (175, 40, 128, 1, 256, 5, 5, 1, 1, 2, 2), (84, 20, 256, 1, 256, 3, 3, 1, 1, 1, 1), (84, 20, 256, 1, 512, 5, 5, 1, 1, 2, 2),
    (42, 10, 512, 1, 512, 3, 3, 1, 1, 1, 1), (700, 161, 1, 2, 64, 5, 5, 1, 1, 2, 2), (350, 80, 64, 2, 64, 3, 3, 1, 1, 1, 1),
    (350, 80, 64, 2, 128, 5, 5, 1, 1, 2, 2), (175, 40, 128, 2, 128, 3, 3, 1, 1, 1, 1), (175, 40, 128, 2, 256, 5, 5, 1, 1, 2, 2),
    (84, 20, 256, 2, 256, 3, 3, 1, 1, 1, 1), (84, 20, 256, 2, 512, 5, 5, 1, 1, 2, 2), (42, 10, 512, 2, 512, 3, 3, 1, 1, 1, 1),
    (112, 112, 64, 1, 64, 1, 1, 0, 0, 1, 1), (56, 56, 64, 1, 256, 1, 1, 0, 0, 1, 1), (56, 56, 256, 1, 64, 1, 1, 0, 0, 1, 1),
    (56, 56, 256, 1, 128, 1, 1, 0, 0, 2, 2), (28, 28, 128, 1, 512, 1, 1, 0, 0, 1, 1), (28, 28, 512, 1, 128, 1, 1, 0, 0, 1, 1),
    (28, 28, 512, 1, 256, 1, 1, 0, 0, 2, 2), (14, 14, 256, 1, 1024, 1, 1, 0, 0, 1, 1), (28, 28, 512, 1, 1024, 1, 1, 0, 0, 2, 2),
    (14, 14, 1024, 1, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 1, 1024, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 1, 512, 1, 1, 0, 0, 2, 2),
    (7, 7, 512, 1, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 1, 2048, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 1, 2048, 1, 1, 0, 0, 2, 2),
    (7, 7, 2048, 1, 512, 1, 1, 0, 0, 1, 1), (112, 112, 64, 2, 64, 1, 1, 0, 0, 1, 1), (56, 56, 64, 2, 256, 1, 1, 0, 0, 1, 1),
    (56, 56, 256, 2, 64, 1, 1, 0, 0, 1, 1), (56, 56, 256, 2, 128, 1, 1, 0, 0, 2, 2), (28, 28, 128, 2, 512, 1, 1, 0, 0, 1, 1),
    (28, 28, 512, 2, 128, 1, 1, 0, 0, 1, 1), (28, 28, 512, 2, 256, 1, 1, 0, 0, 2, 2), (14, 14, 256, 2, 1024, 1, 1, 0, 0, 1, 1),
    (28, 28, 512, 2, 1024, 1, 1, 0, 0, 2, 2), (14, 14, 1024, 2, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 2, 1024, 1, 1, 0, 0, 1, 1),
    (14, 14, 1024, 2, 512, 1, 1, 0, 0, 2, 2), (7, 7, 512, 2, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 2, 2048, 1, 1, 0, 0, 1, 1),
    (14, 14, 1024, 2, 2048, 1, 1, 0, 0, 2, 2), (7, 7, 2048, 2, 512, 1, 1, 0, 0, 1, 1),
)

_INFERENCE_DEVICE_SET = (
    (112, 112, 64, 1, 64, 1, 1, 0, 0, 1, 1), (56, 56, 64, 1, 256, 1, 1, 0, 0, 1, 1), (56, 56, 256, 1, 64, 1, 1, 0, 0, 1, 1),
    (56, 56, 256, 1, 128, 1, 1, 0, 0, 2, 2), (28, 28, 128, 1, 512, 1, 1, 0, 0, 1, 1), (28, 28, 512, 1, 128, 1, 1, 0, 0, 1, 1),
    (28, 28, 512, 1, 256, 1, 1, 0, 0, 2, 2), (14, 14, 256, 1, 1024, 1, 1, 0, 0, 1, 1), (28, 28, 512, 1, 1024, 1, 1, 0, 0, 2, 2),
    (14, 14, 1024, 1, 256, 1, 1, 0, 0, 1, 1), (14, 14, 256, 1, 1024, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 1, 512, 1, 1, 0, 0, 2, 2),
    (7, 7, 512, 1, 512, 3, 3, 1, 1, 1, 1), (7, 7, 512, 1, 2048, 1, 1, 0, 0, 1, 1), (14, 14, 1024, 1, 2048, 1, 1, 0, 0, 2, 2),
    (7, 7, 2048, 1, 512, 1, 1, 0, 0, 1, 1),
)

DEEPBENCH = {
    "deepbench-training": _TRAINING_SET,
    "deepbench-inference-server": _INFERENCE_SERVER_SET,
    "deepbench-inference-device": _INFERENCE_DEVICE_SET,
}


def deepbench_problem(row: tuple, batch: int | None = None, layout: str = "NCHW") -> ConvProblem:
    """One DeepBench row -> ConvProblem (bias off: DeepBench times the bare convolution)."""
    W, H, C, N, K, S, R, pad_w, pad_h, stride_w, stride_h = row
    return ConvProblem(N=N if batch is None else batch, C=C, H=H, W=W, K=K, R=R, S=S,
                       stride=(stride_h, stride_w), pad=(pad_h, pad_w), layout=layout, bias=False)


# -- lookup -------------------------------------------------------------------------------------
SUITES = ("resnet50", *DEEPBENCH)
# DESIGN.md's CLI example says "deepbench-inference": the server table.
SUITE_ALIASES = {"deepbench-inference": "deepbench-inference-server"}


def _suite(name: str) -> str:
    name = SUITE_ALIASES.get(name, name)
    if name not in SUITES:
        raise BadInput(f"conv suite {name!r} is unknown; allowed: {', '.join(SUITES + tuple(SUITE_ALIASES))}")
    return name


def list_layers(suite: str, aliases: bool = False) -> list:
    """Full names (``suite/layer``) of a suite's layers, in table order; ResNet-50 aliases on request."""
    suite = _suite(suite)
    if suite == "resnet50":
        names = list(RESNET50) + (list(RESNET50_ALIASES) if aliases else [])
    else:
        names = [f"{i:03d}" for i in range(len(DEEPBENCH[suite]))]
    return [f"{suite}/{n}" for n in names]


def _all_names() -> list:
    return [n for s in SUITES for n in list_layers(s, aliases=True)]


def conv_layer(name: str, batch: int | None = None, layout: str = "NCHW") -> ConvProblem:
    """``suite/layer`` -> ConvProblem; ``batch`` None: 32 for ResNet-50, the table's N for DeepBench."""
    suite, _, layer = str(name).partition("/")
    try:
        suite = _suite(suite)
        if suite == "resnet50":
            kw = RESNET50[RESNET50_ALIASES.get(layer, layer)]
            return ConvProblem(N=RESNET50_BATCH if batch is None else batch, layout=layout, **kw)
        table = DEEPBENCH[suite]
        if not (layer.isdigit() and int(layer) < len(table)):
            raise KeyError(layer)
        return deepbench_problem(table[int(layer)], batch, layout)
    except (KeyError, BadInput) as e:
        if isinstance(e, BadInput) and suite in SUITES and layer:
            raise                                  # a bad batch or layout: say that, not "unknown"
        close = difflib.get_close_matches(str(name), _all_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            f"; suites: {', '.join(SUITES)} (list_layers(suite) names the layers)"
        raise BadInput(f"conv layer {name!r} is unknown{hint}") from None
