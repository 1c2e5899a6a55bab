"""mdistiller-compatible CIFAR model zoo: importing the modules registers every architecture."""

from kdlab.models.cifar import mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
