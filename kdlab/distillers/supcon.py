"""SUPCON: supervised contrastive training of a student and its projection head, no teacher, no classifier.

    loss_supcon = SupCon(head(student pooled_feat), target, CONKD.SUPCON_TEMPERATURE, CONKD.SUPCON_VARIANT)

The first stage of the ConKD-Lion seed's teacher (resnet101-teacher.ipynb): the encoder and CONKD's head
Linear(d, d) -> ReLU -> Linear(d, CONKD.PROJ_DIM) trained with SupCon alone. The head is saved with the
student (the "extra" entry of student_best), where CONKD.KD_ON embeddings reads it as the teacher's head;
a classifier-only stage on the frozen encoder (CLASSIFIER.FREEZE_BACKBONE) gives the classifier. The
held-out test_loss is the SupCon loss (the student's classifier is not trained here).
"""

from __future__ import annotations

from kdlab.distillers.base import Distiller
from kdlab.distillers.build import DISTILLERS
from kdlab.distillers.conkd import projection_head
from kdlab.distillers.connectors import probe_features
from kdlab.distillers.losses import supcon_loss


@DISTILLERS.register("SUPCON")
class SupCon(Distiller):
    paper = "Supervised contrastive learning (Khosla et al., NeurIPS 2020), projection head only"
    group = "CONKD"
    needs_teacher = False
    dataset_facts = ("input_size",)  # the student is probed once to size the projection head
    held_out_objective = True

    def __init__(self, student, feat_dim: int, proj_dim: int, temperature: float, variant: str = "khosla"):
        super().__init__(student)
        self.head = projection_head(feat_dim, proj_dim)
        self.temperature, self.variant = temperature, variant

    @classmethod
    def from_config(cls, cfg, student, teacher=None, facts=None):
        c = cfg.CONKD
        feat_dim = probe_features(student, facts.input_size)["pooled_feat"].shape[1]
        return cls(student, feat_dim, c.PROJ_DIM, c.SUPCON_TEMPERATURE, c.SUPCON_VARIANT)

    def forward_train(self, image, target, **extras):
        logits, feats = self.student(image)
        embedding = self.head(feats["pooled_feat"])
        return logits, {"loss_supcon": supcon_loss(embedding, target, self.temperature, variant=self.variant)}
