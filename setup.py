from setuptools import find_packages, setup

setup(
    name="kdlab",
    version="0.1.0",
    description="Config-driven knowledge distillation for image models (KD, logit-standardized KD, DKD, MLKD, ...)",
    packages=find_packages(include=["kdlab", "kdlab.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "yacs",
        "PyYAML",
        "numpy",
        "pillow",
        "tqdm",
        "tensorboard",
        "lion-pytorch",
        "scikit-learn",
        "scipy",
        "matplotlib",
        "timm",
    ],
)
