"""Every config key, defined once, with its meaning.

Key names follow mdistiller so that its YAML files and the logit-standardization-KD ones
load unchanged. Where the two codebases' defaults differ, kdlab keeps mdistiller's
(KD.TEMPERATURE 4, KD.LOSS.KD_WEIGHT 0.9, LOG.WANDB off); `--logit-stand` sets the
logit-standardization values explicitly.
"""

from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------- experiment
_C.EXPERIMENT = CN()
_C.EXPERIMENT.PROJECT = "distill"  # run dir: LOG.PREFIX/PROJECT/<NAME or TAG>
_C.EXPERIMENT.NAME = ""  # run name; empty -> TAG is used
_C.EXPERIMENT.TAG = "default"  # comma-separated tags (mdistiller convention)
_C.EXPERIMENT.LOGIT_STAND = False  # z-score logits before KD (set by --logit-stand)
_C.EXPERIMENT.SEED = 0  # seeds model init, data order, augmentation and dropout
_C.EXPERIMENT.DETERMINISTIC = False  # torch.use_deterministic_algorithms (slower on CUDA)

# ---------------------------------------------------------------- dataset
_C.DATASET = CN()
_C.DATASET.TYPE = "cifar100"  # digits | cifar10 | cifar100 | imagenette | imagenet | tiny_imagenet | voc
_C.DATASET.ROOT = "./data"  # folder holding the dataset's standard top folder
_C.DATASET.DOWNLOAD = False  # download when missing (never by default)
_C.DATASET.NUM_WORKERS = 2  # DataLoader worker processes (0 = load in the main process)
_C.DATASET.VARIANT = ""  # imagenette: imagenette2 | imagenette2-320 | imagenette2-160
_C.DATASET.IMAGE_SIZE = 0  # training resolution; 0 = the dataset's default
# statistics of the final normalization: dataset (its own) | imagenet | auto = imagenet for CIFAR resized to an
# IMAGE_SIZE other than 32 (torchvision ImageNet backbones), else dataset. ImageNet/Imagenette/VOC use ImageNet's
# either way; digits takes dataset (one channel) only.
_C.DATASET.NORMALIZE = "auto"
_C.DATASET.AUGMENT = True  # training augmentation on/off
# "" = the dataset's own transforms | tiny_transformers (CIFAR): the LS repo's ViT pipeline, resized to
# IMAGE_SIZE (0 = 32), timm's strong augmentation (RandAugment, random erasing), ImageNet mean/std
_C.DATASET.PIPELINE = ""
_C.DATASET.GPU_AUGMENT = True  # in-memory datasets: augment whole batches on the device
# torchvision.transforms.v2 pipelines (kdlab/data/config_transforms.py): a list of names or one-key mappings
# {Name: {argument: value}}, e.g. [RandomHorizontalFlip, {ColorJitter: {brightness: 0.4}}]; on the command line
# "['RandomHorizontalFlip', {'ColorJitter': {'brightness': 0.4}}]". Empty = the dataset's built-in pipeline.
# A non-empty list replaces the built-in augmentation (TEST: the evaluation resizing); kdlab then resizes to
# the working size where the list left another size, converts to float and normalizes. Per dataset:
# cifar10/100: per-sample path on uint8 tensors instead of the batched on-device one (GPU_AUGMENT applies to
# the other list, if that one is empty); digits: on the 1x8x8 float image in [0, 1] before standardization
# (geometric transforms and brightness/contrast only: one channel); imagenet/imagenette: on the decoded uint8
# image (mind the size: add RandomResizedCrop/Resize, else FitSize squashes it); voc: jointly on image and mask
# (mask nearest-neighbour, padded/rotated-in mask pixels 255 unless the entry sets fill); tiny_imagenet: on the
# 64x64 uint8 image. Two-view methods: the strong view adds RandAugment + Cutout to the list's transforms.
_C.DATASET.TRAIN_TRANSFORMS = []  # training pipeline (above)
_C.DATASET.TEST_TRANSFORMS = []  # evaluation pipeline (held-out split and test set)
# held-out validation: this fraction of the training set (stratified by class, the same split for every
# EXPERIMENT.SEED) is kept out of training and evaluated with the test transforms; the best checkpoint, the
# plateau scheduler and early stopping follow it, and the test set is evaluated and reported apart
# (metrics.json: val_* and test_* per epoch, best_val_acc, best_acc = test accuracy at the best val epoch).
# 0 = no held-out split: selection follows the test set (mdistiller's practice).
_C.DATASET.VAL_SPLIT = 0.0
_C.DATASET.TEST = CN()
_C.DATASET.TEST.BATCH_SIZE = 64  # evaluation batch size

# ---------------------------------------------------------------- distiller
_C.DISTILLER = CN()
_C.DISTILLER.TYPE = "NONE"  # NONE (vanilla) | KD | DKD | MLKD | FITNET | CONKD | ...
_C.DISTILLER.TEACHER = "ResNet50"  # teacher model name (see the model list)
_C.DISTILLER.STUDENT = "resnet32"  # student model name
_C.DISTILLER.TEACHER_CKPT = ""  # teacher weights; empty -> download_ckpts/ default path
_C.DISTILLER.TEACHER_PRETRAINED = ""  # torchvision weights name/file for ImageNet teachers
_C.DISTILLER.STUDENT_PRETRAINED = ""  # optional initial student weights (file or name)
_C.DISTILLER.MODEL_KWARGS = CN(new_allowed=True)  # extra keyword args for the student's builder (lower-cased)
_C.DISTILLER.MODEL_KWARGS.DROPOUT = 0.0  # dropout before the classifier (scaled CNNs)
_C.DISTILLER.TEACHER_KWARGS = CN(new_allowed=True)  # extra keyword args for the teacher's builder
# Teacher-output cache (kdlab.engine.teacher_cache_run): for methods whose only use of the teacher is its logits
# (KD, DKD, CTKD, CONKD, DOT with those) on datasets whose training augmentation has finitely many outcomes
# (CIFAR's crop + flip: 162 views per image; digits' shift: 9), the teacher's logits of every view of every
# training image are computed once and looked up instead of running the teacher. off | auto (use a matching
# cache; build one when the run's teacher forwards are at least the build's, EPOCHS >= views per image; else
# say why not) | build (build or resume it now, a ConfigError when the run cannot use one). Never in evaluation.
_C.DISTILLER.TEACHER_CACHE = "off"
_C.DISTILLER.TEACHER_CACHE_DIR = ""  # where caches live; empty -> <LOG.PREFIX>/teacher_cache
_C.DISTILLER.TEACHER_CACHE_DTYPE = "float32"  # storage: float32 (exact) | bfloat16 (half the disk, ~3 digits)

# ---------------------------------------------------------------- solver
_C.SOLVER = CN()
_C.SOLVER.TRAINER = "base"  # base | aug | ours (two views, MLKD) | dot (DOT, SGD only) | crd (= base)
_C.SOLVER.BATCH_SIZE = 64  # global batch; under torchrun split evenly over ranks
_C.SOLVER.EPOCHS = 240  # total training epochs
_C.SOLVER.LR = 0.05  # base learning rate (for SOLVER.BATCH_SIZE)
_C.SOLVER.LR_DECAY_STAGES = [150, 180, 210]  # multistep: epochs where LR *= DECAY_RATE
_C.SOLVER.LR_DECAY_RATE = 0.1  # multistep: factor applied at each LR_DECAY_STAGES epoch
_C.SOLVER.WEIGHT_DECAY = 0.0001  # L2 / decoupled (AdamW, Lion) weight decay
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum; beta1 for Adam/AdamW/Lion
_C.SOLVER.NESTEROV = False  # SGD Nesterov momentum
_C.SOLVER.NO_DECAY_1D = False  # no weight decay on biases, 1-D (norm) parameters, tokens and position embeddings
_C.SOLVER.BETAS = [0.9, 0.999]  # Adam/AdamW betas (Lion: [0.9, 0.99] recommended)
_C.SOLVER.TYPE = "SGD"  # SGD | Adam | AdamW | Lion
_C.SOLVER.SCHEDULER = "multistep"  # multistep | cosine | cosine_timm (cosine over all epochs) | plateau | constant
_C.SOLVER.WARMUP_EPOCHS = 0  # linear LR warm-up from WARMUP_FACTOR*LR over these epochs
_C.SOLVER.WARMUP_FACTOR = 0.1  # warm-up starts at WARMUP_FACTOR * LR
_C.SOLVER.MIN_LR = 0.0  # cosine floor
_C.SOLVER.PLATEAU_METRIC = "test_acc"  # plateau: test_acc (max) | test_loss (min), of the held-out split if VAL_SPLIT
_C.SOLVER.PLATEAU_PATIENCE = 5  # plateau: epochs without improvement before the LR is cut
_C.SOLVER.PLATEAU_FACTOR = 0.1  # plateau: LR multiplier at each cut
_C.SOLVER.EARLY_STOP_PATIENCE = 0  # stop after N epochs without a better SELECT_METRIC; 0 = off
# the held-out score (VAL_SPLIT: val_*) that picks the best checkpoint and counts EARLY_STOP_PATIENCE: test_acc (max;
# mIoU for segmentation) | test_loss (min; CE, or the method's own objective for methods that train no classifier)
_C.SOLVER.SELECT_METRIC = "test_acc"
_C.SOLVER.GRAD_CLIP = 0.0  # max global grad norm; 0 = off
# auto: at start-up kdlab picks the precision for this device, model pair and batch (by capability,
# else a short timed trial of the real step, cached under $KDLAB_CACHE_DIR or ~/.cache/kdlab):
# fp32, bf16 (CUDA Ampere+, CPUs with native bf16) or fp16 + GradScaler (CUDA Volta/Turing).
# True: autocast with AMP_DTYPE; False: fp32. The run's config.yaml records the value used.
_C.SOLVER.AMP = "auto"  # auto | True | False
_C.SOLVER.AMP_DTYPE = "bfloat16"  # with AMP True: bfloat16 | float16 (CUDA only); with auto, chosen too
_C.SOLVER.CHANNELS_LAST = "auto"  # auto | True | False: NHWC memory format for conv nets (auto: as for AMP)
_C.SOLVER.COMPILE = False  # torch.compile the student and teacher
_C.SOLVER.DEVICE = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
_C.SOLVER.MAX_STEPS_PER_EPOCH = 0  # stop each epoch after this many steps (smoke tests, benchmarks); 0 = all
_C.SOLVER.SKIP_NONFINITE = False  # skip a batch whose loss is NaN/Inf instead of stopping
_C.SOLVER.DIST_BACKEND = ""  # torchrun: "" = nccl on CUDA, gloo on CPU
_C.SOLVER.SYNC_BN = False  # torchrun: convert student BatchNorm to SyncBatchNorm
_C.SOLVER.DOT = CN()  # SOLVER.TRAINER dot (Zhao et al. ICCV 2023, mdistiller's DOT; kdlab/engine/dot.py)
# momentum of the CE gradient = MOMENTUM - DELTA, of the distillation gradient = MOMENTUM + DELTA (0: plain SGD)
_C.SOLVER.DOT.DELTA = 0.075

# ---------------------------------------------------------------- logging
_C.LOG = CN()
_C.LOG.PREFIX = "./logs"  # root of run directories
_C.LOG.TENSORBOARD_FREQ = 500  # iterations between TensorBoard scalar writes
_C.LOG.SAVE_CHECKPOINT_FREQ = 40  # keep an extra checkpoint every N epochs
_C.LOG.WANDB = False  # Weights & Biases logging (off; kdlab never needs the network)
_C.LOG.PROGRESS = True  # tqdm progress bar

# ================================================================ methods
# KD (Hinton et al. 2015) -- also used by MLKD
_C.KD = CN()
_C.KD.TEMPERATURE = 4.0  # mdistiller's default; --logit-stand sets --base-temp (2)
_C.KD.LOSS = CN()
_C.KD.LOSS.CE_WEIGHT = 0.1  # weight of the cross-entropy term
_C.KD.LOSS.KD_WEIGHT = 0.9  # mdistiller's default; --logit-stand sets --kd-weight (9)
_C.KD.PIXELS = "labelled"  # segmentation: labelled (mean over labelled pixels) | all (sum over pixels / batch size)

# DKD (Zhao et al. CVPR 2022): loss_kd = min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD)
_C.DKD = CN()
_C.DKD.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.DKD.ALPHA = 1.0  # TCKD weight; --logit-stand multiplies by --kd-weight
_C.DKD.BETA = 8.0  # NCKD weight (mdistiller's per-pair values: 2, 6 or 8); --logit-stand multiplies by --kd-weight
_C.DKD.T = 4.0  # temperature; --logit-stand sets --base-temp
_C.DKD.WARMUP = 20  # epochs of linear warm-up of the KD terms (0 = none)

# FitNet (Romero et al. 2015): MSE between ConvReg(student hint) and the teacher's hint
_C.FITNET = CN()
_C.FITNET.HINT_LAYER = 2  # index into feats["feats"] (0 = stem, 1..4 = stages), same for both models
_C.FITNET.INPUT_SIZE = ()  # (H, W) of the zero batch that probes feature shapes; empty = the dataset's size
_C.FITNET.LOSS = CN()
_C.FITNET.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.FITNET.LOSS.FEAT_WEIGHT = 100.0  # weight of the hint MSE (loss_feat)

# ConKD: supervised contrastive on a projection head + logit-standardized KD + CE
_C.CONKD = CN()
_C.CONKD.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.CONKD.KD_WEIGHT = 9.0  # weight of the standardized KD term; --logit-stand sets --kd-weight
_C.CONKD.SUPCON_WEIGHT = 0.1  # weight of the supervised contrastive term
_C.CONKD.TEMPERATURE = 2.0  # KD base temperature (logits standardized); --logit-stand sets --base-temp
_C.CONKD.SUPCON_TEMPERATURE = 0.07  # SupCon temperature
_C.CONKD.PROJ_DIM = 128  # output size of the projection head Linear(d, d) -> ReLU -> Linear(d, PROJ_DIM)
_C.CONKD.SUPCON_VARIANT = "khosla"  # khosla (Khosla et al. 2020) | seed (self as positive) | two_view (seed notebooks)
# logits: KD between the classifiers' logits | embeddings: KD between the projection heads' outputs, the teacher's
# head loaded from DISTILLER.TEACHER_CKPT (a DISTILLER.TYPE SUPCON run's student_best); no classifier is trained
_C.CONKD.KD_ON = "logits"

# The student's classifier (any method): an MLP in place of the model's last Linear, and classifier-only training
# on a frozen backbone (a linear probe; start from a trained backbone with DISTILLER.STUDENT_PRETRAINED)
_C.CLASSIFIER = CN()
_C.CLASSIFIER.HIDDEN = []  # hidden widths, each Linear -> [BatchNorm1d] -> ReLU -> [Dropout]; [] = the own Linear
_C.CLASSIFIER.BATCHNORM = False  # BatchNorm1d after each hidden Linear (needs HIDDEN)
_C.CLASSIFIER.DROPOUT = 0.0  # Dropout probability after each hidden ReLU (needs HIDDEN)
# train only the classifier: the backbone's weights and BatchNorm statistics stay as loaded (backbone in eval mode)
_C.CLASSIFIER.FREEZE_BACKBONE = False

# FEATKD: CE_WEIGHT * CE + ALPHA * KD + BETA * sum over layer pairs of PAIR_WEIGHTS[i] * loss_i(connector(student),
# teacher); loss_i = PAIR_LOSSES[i] (mse | cosine); the defaults give BETA * the mean over pairs of MSE
_C.FEATKD = CN()
_C.FEATKD.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.FEATKD.ALPHA = 1.0  # weight of the logit KD term; --logit-stand sets --kd-weight
_C.FEATKD.BETA = 100.0  # weight of the feature MSE, a mean over the pairs (FitNet's FEAT_WEIGHT for one pair)
_C.FEATKD.TEMPERATURE = 4.0  # KD temperature; --logit-stand sets --base-temp
_C.FEATKD.STUDENT_LAYERS = [2, 3]  # indices into the student's feats["feats"] (0 = stem, then stages)
_C.FEATKD.TEACHER_LAYERS = [2, 3]  # the teacher layer paired with each student layer (same length)
_C.FEATKD.INPUT_SIZE = []  # (H, W) of the zero batch that probes feature shapes; empty = the dataset's size
# a layer entry is an index into feats["feats"] or a name of a feats entry: "pooled_feat" (the classifier's input
# vector) pairs vectors (a Linear connector where the sizes differ); a pair is two maps or two vectors
_C.FEATKD.PAIR_LOSSES = ["mse"]  # per pair (one entry: every pair): mse | cosine (1 - cos over channels, meaned)
_C.FEATKD.PAIR_WEIGHTS = []  # per-pair weights inside BETA; empty = 1 / number of pairs (the mean)
_C.FEATKD.CONNECTOR = "conv_bn"  # map pairs: conv_bn (1x1 conv + BatchNorm) | conv (seed: 1x1 conv + bias, bilinear)
_C.FEATKD.PIXELS = "labelled"  # segmentation KD term: labelled (mean over labelled pixels) | all (sum / batch size)

# PKT (Passalis & Tefas 2018): KL between the B x B cosine-similarity distributions of pooled features
_C.PKT = CN()
_C.PKT.LOSS = CN()
_C.PKT.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.PKT.LOSS.FEAT_WEIGHT = 30000.0  # weight of the PKT term (loss_feat), a mean over B*B entries

# RKD (Park et al. 2019): FEAT_WEIGHT * (DISTANCE_WEIGHT * distance + ANGLE_WEIGHT * angle) on pooled features
_C.RKD = CN()
_C.RKD.DISTANCE_WEIGHT = 25  # weight of the smooth-L1 between mean-normalized pairwise-distance matrices
_C.RKD.ANGLE_WEIGHT = 50  # weight of the smooth-L1 between the cosines of all triplet angles
_C.RKD.LOSS = CN()
_C.RKD.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.RKD.LOSS.FEAT_WEIGHT = 1.0  # weight of the whole relational term (loss_feat)
_C.RKD.PDIST = CN()
_C.RKD.PDIST.EPSILON = 1e-12  # squared pairwise distances are clamped at this floor before the square root
_C.RKD.PDIST.SQUARED = False  # compare squared distances instead of distances

# KDSVD (Lee et al. 2018): RBF relations between the singular vectors of consecutive stages' maps
_C.KDSVD = CN()
_C.KDSVD.K = 1  # teacher singular vectors kept per map (the student's K + 3 are aligned to them)
_C.KDSVD.LOSS = CN()
_C.KDSVD.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term
_C.KDSVD.LOSS.FEAT_WEIGHT = 1.0  # weight of the SVD relation term (loss_feat)

# AT (attention transfer): loss_feat = FEAT_WEIGHT * sum over the stage outputs feats[1:] of the mean squared
# difference of the L2-normalized attention maps mean_c(feat**P) (kdlab/distillers/at.py).
_C.AT = CN()
_C.AT.P = 2  # exponent of the activations in the attention map mean_c(feat**P)
_C.AT.LOSS = CN()
_C.AT.LOSS.CE_WEIGHT = 1.0  # weight of the student's cross-entropy
_C.AT.LOSS.FEAT_WEIGHT = 1000.0  # weight of the attention-transfer term (loss_feat)

# SP (similarity-preserving): loss_feat = FEAT_WEIGHT * sum((G_t - G_s)^2) / B^2, G the row-normalized B x B
# Gram matrix of each model's flattened last stage output feats[-1] (kdlab/distillers/sp.py).
_C.SP = CN()
_C.SP.LOSS = CN()
_C.SP.LOSS.CE_WEIGHT = 1.0  # weight of the student's cross-entropy
_C.SP.LOSS.FEAT_WEIGHT = 3000.0  # weight of the similarity-preserving term (loss_feat)

# NST (neuron selectivity transfer): loss_feat = FEAT_WEIGHT * sum over the stage outputs feats[1:] of the squared
# MMD, polynomial kernel (x.y)^2, between the two maps' L2-normalized channels (kdlab/distillers/nst.py).
_C.NST = CN()
_C.NST.LOSS = CN()
_C.NST.LOSS.CE_WEIGHT = 1.0  # weight of the student's cross-entropy
_C.NST.LOSS.FEAT_WEIGHT = 50.0  # weight of the neuron-selectivity term (loss_feat)

_C.OFD = CN()  # OFD (Heo et al. 2019): pre-ReLU stage features, margins from the teacher's BatchNorms
_C.OFD.LOSS = CN()
_C.OFD.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term loss_ce
_C.OFD.LOSS.FEAT_WEIGHT = 0.001  # weight of the partial-L2 feature term loss_feat (summed over the stages)
_C.OFD.CONNECTOR = CN()
_C.OFD.CONNECTOR.KERNEL_SIZE = 1  # kernel of each connector's conv (student -> teacher channels, then BN)


_C.VID = CN()  # VID (Ahn et al. 2019): per-stage regressors predicting the teacher's maps, learned variances
_C.VID.LOSS = CN()
_C.VID.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term loss_ce
_C.VID.LOSS.FEAT_WEIGHT = 1.0  # weight of the Gaussian negative log-likelihood term loss_feat
_C.VID.EPS = 1e-5  # variance floor: variance = softplus(log_scale) + EPS
_C.VID.INIT_PRED_VAR = 5.0  # variance each channel starts with (must exceed EPS)
_C.VID.TRAIN_VARIANCE = True  # train the variances (the paper); False: fixed at INIT_PRED_VAR, as mdistiller runs
_C.VID.INPUT_SIZE = (32, 32)  # [H, W] of the zero batch that probes the stage channels; [] = the dataset's size

# CTKD (Li et al., AAAI 2023): a learnable temperature T = T_START + T_END * sigmoid(r) behind a gradient-reversal
# layer whose strength lambda follows a curriculum over epochs, for DISTILLER.TYPE CTKD (loss weights from KD.LOSS)
# and CTKD_DKD (from DKD); the reference's train_student.py flags in brackets (kdlab/distillers/ctkd.py).
_C.CTKD = CN()
_C.CTKD.MODE = "global"  # global (one temperature) | instance (one per sample, an MLP on the logits; CTKD only)
_C.CTKD.T_START = 1.0  # lowest temperature [--t_start]
_C.CTKD.T_END = 20.0  # temperature range above T_START [--t_end]
_C.CTKD.COSINE_DECAY = True  # lambda schedule: CTKD's CosineDecay; False: its LinearDecay [--cosine_decay]
_C.CTKD.DECAY_MAX = 0.0  # lambda at epoch 0 [--decay_max]
_C.CTKD.DECAY_MIN = -1.0  # lambda from epoch DECAY_LOOPS on; negative reverses the gradient [--decay_min]
_C.CTKD.DECAY_LOOPS = 10  # epochs of the lambda curriculum [--decay_loops]
_C.CTKD.HIDDEN = 128  # MODE instance: hidden width of the temperature MLP

# LG: ViT students distilled by a CNN teacher as the LS repo's tiny-transformers does (its DISTILLATION keys, same
# names and defaults; its LOGIT_STANDARD is EXPERIMENT.LOGIT_STAND; kdlab/distillers/lg.py)
_C.LG = CN()
_C.LG.TEACHER_IMG_SIZE = 32  # the teacher sees the student's input resized (bilinear) to this size
_C.LG.ENABLE_LOGIT = False  # logit KD (loss_kd); also halves the CE term, as the reference
_C.LG.LOGIT_LOSS = "soft"  # soft: KL at LOGIT_TEMP | hard: CE against the teacher's argmax
_C.LG.LOGIT_TEMP = 1.0  # KD temperature; --logit-stand sets --base-temp
_C.LG.LOGIT_WEIGHT = 0.5  # weight of loss_kd
_C.LG.EXTRA_WEIGHT_IN = 9.0  # extra KD weight with EXPERIMENT.LOGIT_STAND only; --logit-stand sets --kd-weight
_C.LG.ENABLE_INTER = False  # locality guidance (Li et al. ECCV 2022): feature term loss_feat
_C.LG.INTER_TRANSFORM = "linear"  # linear (trainable 1x1 conv to the teacher's width) | attention | similarity
_C.LG.INTER_TEACHER_INDEX = []  # teacher stage outputs (feats["feats"][1:]) paired with ...
_C.LG.INTER_STUDENT_INDEX = []  # ... these student block maps (feats["feats"])
_C.LG.INTER_WEIGHT = 2.5  # weight of loss_feat (a sum over the pairs)

# CRD (contrastive representation distillation): embedding heads on the pooled features, a memory bank of
# the training set, NCE with K negatives from other classes (kdlab/distillers/crd.py).
_C.CRD = CN()
_C.CRD.MODE = "exact"  # positive of each sample: exact = the sample itself, relax = a random sample of its class
_C.CRD.FEAT = CN()
_C.CRD.FEAT.DIM = 128  # embedding (and memory-bank row) dimension of both heads
# The heads' input sizes: the models' pooled-feature sizes (resnet8x4 / resnet32x4: 256). kdlab probes the
# models and warns where these differ (mdistiller needs them equal; kdlab's model of that name may differ).
_C.CRD.FEAT.STUDENT_DIM = 256  # the student's pooled-feature size, as mdistiller's YAML files give it
_C.CRD.FEAT.TEACHER_DIM = 256  # the teacher's pooled-feature size, as mdistiller's YAML files give it
_C.CRD.LOSS = CN()
_C.CRD.LOSS.CE_WEIGHT = 1.0  # weight of the cross-entropy term loss_ce
_C.CRD.LOSS.FEAT_WEIGHT = 0.8  # weight of the contrastive term loss_feat (student + teacher NCE)
_C.CRD.NCE = CN()
_C.CRD.NCE.K = 16384  # negatives per sample, drawn from other classes (with replacement if fewer exist)
_C.CRD.NCE.MOMENTUM = 0.5  # memory-bank update: row = normalize(MOMENTUM * row + (1 - MOMENTUM) * embedding)
_C.CRD.NCE.TEMPERATURE = 0.07  # contrast scores are exp(bank row . embedding / TEMPERATURE)

# ReviewKD (knowledge review): attention-based fusion (ABF) of the student's features, deepest first, compared
# with the teacher's preact_feats[1:] and pooled_feat by the HCL loss (kdlab/distillers/reviewkd.py). The four
# lists are per pair (mdistiller's YAML files set them); the defaults fit resnet32x4 -> resnet8x4 on 32x32 inputs.
_C.REVIEWKD = CN()
_C.REVIEWKD.CE_WEIGHT = 1.0  # weight of the student's cross-entropy
_C.REVIEWKD.REVIEWKD_WEIGHT = 1.0  # weight of the review (HCL) term, loss_feat
_C.REVIEWKD.WARMUP_EPOCHS = 20  # loss_feat is scaled by min(epoch / WARMUP_EPOCHS, 1), epochs from 1; 0: none
_C.REVIEWKD.SHAPES = [1, 8, 16, 32]  # the student's reviewed map sizes, deep to shallow (pooled_feat's 1 first)
_C.REVIEWKD.OUT_SHAPES = [1, 8, 16, 32]  # the teacher's map sizes, deep to shallow: each ABF output is resized to it
_C.REVIEWKD.IN_CHANNELS = [64, 128, 256, 256]  # the student's reviewed channels, shallow to deep, pooled_feat's last
_C.REVIEWKD.OUT_CHANNELS = [64, 128, 256, 256]  # the teacher's channels (preact_feats[1:], pooled_feat): ABF outputs
_C.REVIEWKD.MAX_MID_CHANNEL = 512  # read but not used, as in mdistiller: the ABF width is min(512, IN_CHANNELS[-1])
_C.REVIEWKD.STU_PREACT = False  # review the student's preact_feats instead of feats


def get_cfg() -> CN:
    """Return a fresh, mutable copy of the default config."""
    return _C.clone()
