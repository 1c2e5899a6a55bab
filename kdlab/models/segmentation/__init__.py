"""Segmentation models: torchvision's FCN / DeepLabV3 / LR-ASPP and kdlab's small student (seg_small).

Each returns (per-pixel logits N x C x H x W at the input resolution, feats) with feats holding
"feats" (stem, then each backbone stage), "preact_feats" and "pooled_feat" (the global average of
the last backbone feature), so feature distillers treat them like the classification models.
"""

from kdlab.models.segmentation import elec475, small, torchvision_seg  # noqa: F401  (register the models)
