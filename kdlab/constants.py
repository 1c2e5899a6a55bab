"""Values shared by several kdlab packages, defined once."""

IGNORE_INDEX = 255  # the "void" label of segmentation masks (PASCAL VOC): no loss, no KD, not scored
