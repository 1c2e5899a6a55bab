"""mdistiller-compatible CIFAR model zoo: importing the modules registers every architecture."""

from kdlab.models.cifar import (  # noqa: F401
    mobilenetv2,
    mv2_tinyimagenet,
    resnet,
    scaled_cnn,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
