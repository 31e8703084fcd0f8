"""The three apps `make reproduce` builds and evaluates, shared by reproduce.py and report.py."""

from __future__ import annotations

from nestdnn.cli.pipeline import PipelinePlan

FMNIST = ("--dataset", "fashion-mnist")
APPS = [
    # Pruned widths stay multiples of 4: SIMD-friendly (no odd-width slow paths in XNNPACK), and
    # torch 2.14.1's oneDNN backward corrupts the heap training ResNet-20 with augmentation at
    # odd widths such as 6/13/26 on this CPU (multiples of 4 train cleanly).
    # The model of the earlier issues (VGG-16 x0.25), trained 6 epochs instead of 10 so that the
    # whole reproduction, from-scratch baselines included, fits in the 3-hour budget.
    PipelinePlan(
        name="fmnist-vgg16", arch="vgg16", width_mult=0.25, data_args=FMNIST,
        train_epochs=6, prune_ratio=0.1, prune_retrain_epochs=0.3, prune_max_steps=8,
        accuracy_drop=0.02, prune_round_to=4, descendants=5, epochs_per_level=1.0,
        profile_backends="torch,tflite", threads=1,
    ),
    # A different family on the same task.
    PipelinePlan(
        name="fmnist-resnet20", arch="resnet20", width_mult=0.5, data_args=FMNIST,
        train_epochs=4, prune_ratio=0.1, prune_retrain_epochs=0.3, prune_max_steps=8,
        accuracy_drop=0.02, prune_round_to=4, descendants=5, epochs_per_level=1.0,
        profile_backends="torch,tflite", threads=1,
    ),
    # A different task: its own label set (3-class footwear), derived from Fashion-MNIST.
    PipelinePlan(
        name="footwear-vgg11", arch="vgg11", width_mult=0.25,
        data_args=(*FMNIST, "--classes", "Sandal,Sneaker,Ankle boot"),
        train_epochs=6, prune_ratio=0.2, prune_retrain_epochs=0.5, prune_max_steps=8,
        accuracy_drop=0.03, prune_round_to=4, descendants=5, epochs_per_level=1.0,
        profile_backends="torch,tflite", threads=1,
    ),
]  # fmt: skip
STABILITY_APP = "fmnist-vgg16"  # issue 5's model: profiled three times
API_APP = "fmnist-vgg16"  # issue 8's model
