"""Every config key and its default, in one place, grouped by node.

Key names follow detectron2 wherever detectron2 has the key, so settings carry over word for
word (``cfg.SOLVER.BASE_LR = 0.01`` in a report is ``SOLVER.BASE_LR: 0.01`` in YAML). Project
keys live in their own nodes (``INPUT.CHANNELS``, ``INPUT.OTSU``, ``UNET.*``, ``CAMPAIGN.*``).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------------------------
# MODEL: Mask R-CNN (torchvision engine by default; detectron2 optional)
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # only Mask R-CNN (GeneralizedRCNN) is built
_C.MODEL.ENGINE = "torchvision"  # "torchvision" (always available) or "detectron2" (optional)
_C.MODEL.DEVICE = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
_C.MODEL.MASK_ON = True  # predict instance masks
_C.MODEL.WEIGHTS = ""  # path to a project checkpoint or torchvision state dict; "" = random init
_C.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]  # per input channel, applied after INPUT normalisation
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]  # per input channel

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"  # the only backbone built (ResNet + FPN)
_C.MODEL.BACKBONE.FREEZE_AT = 2  # 0 = train all; k = freeze stem + first k-1 res stages

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50 or 101
_C.MODEL.RESNETS.NORM = "FrozenBN"  # "FrozenBN" or "BN"
_C.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # must contain MODEL.FPN.IN_FEATURES
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False  # R50/101: stride in the 1x1 conv (MSRA / detectron2 zoo weights)
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 0  # 0 = standard (64); other widths for R18/34 only
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 0  # 0 = standard (64 for R18/34, 256 for R50/101)

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256  # FPN width; small values make CPU training feasible

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]  # one list per FPN level
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# "TorchvisionAnchorGenerator" (rounded to whole pixels, ratio-major; torchvision weights) or
# "DefaultAnchorGenerator" (detectron2's: exact, size-major; detectron2 weights)
_C.MODEL.ANCHOR_GENERATOR.NAME = "TorchvisionAnchorGenerator"
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0  # anchor centre offset, fraction of stride (DefaultAnchorGenerator)

_C.MODEL.RPN = CN()
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000  # per FPN level
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]

_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "StandardROIHeads"  # the only RoI heads built (no cascade)
_C.MODEL.ROI_HEADS.NUM_CLASSES = 1  # foreground classes (names come from dataset metadata)
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # RoIs sampled per image for the heads
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.ONE_CLASS_PER_BOX = True  # one detection per proposal (top class); False = per-class
_C.MODEL.ROI_HEADS.NMS_CLASS_AGNOSTIC = False  # True: one detection per nucleus whatever its phase

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"  # two FC layers of FC_DIM (the only box head built)
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlign"  # "ROIAlign" (unaligned, torchvision) / "ROIAlignV2" (aligned)
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2  # RoIAlign samples per bin side; 0 = adaptive
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024  # width of the two-layer MLP box head
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7

_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"  # NUM_CONV 3x3 convs + deconv (the only one)
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlign"  # as ROI_BOX_HEAD.POOLER_TYPE
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256  # mask-head width
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 4  # mask-head depth
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14

# ---------------------------------------------------------------------------------------------
# INPUT: channel recipes, normalisation, augmentation
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Channel recipe: one entry per model input channel, built from the record's files.
# Names: "gray" (the record's file_name), any key of record["channels"] (e.g. "pcna", "dic"),
# "otsu_mask" (lowered-Otsu mask of the PCNA channel, see INPUT.OTSU).
_C.INPUT.CHANNELS = ["gray", "gray", "gray"]
_C.INPUT.FORMAT = "CHW"  # tensors are (C, H, W) float32 in recipe order; never BGR-swapped
_C.INPUT.SATURATION = CN()
_C.INPUT.SATURATION.LOW = 2.0  # lower percentile mapped to 0 (full image, before crop)
_C.INPUT.SATURATION.HIGH = 98.0  # upper percentile mapped to 1
_C.INPUT.SATURATION.GAMMA = 1.0  # optional gamma after rescaling
_C.INPUT.OTSU = CN()
_C.INPUT.OTSU.SOURCE = "pcna"  # channel the mask is computed from ("gray" for single-channel)
_C.INPUT.OTSU.SIGMA = 2.0  # Gaussian smoothing before thresholding, pixels
_C.INPUT.OTSU.OFFSET = 0.1  # threshold = otsu - OFFSET on the [0, 1] scale (lowered Otsu)
# Pixel scale (pcna_seg/data/scale.py): one factor for train and test, whole images and tiles.
_C.INPUT.SCALE = CN()
_C.INPUT.SCALE.MODE = "fixed"  # "fixed" (FACTOR), "object_size" (DIAMETER) or "short_edge" (MIN_SIZE_*)
_C.INPUT.SCALE.FACTOR = 1.0  # fixed: model pixels per image pixel (1.0 = native pixels)
_C.INPUT.SCALE.DIAMETER = 0.0  # object_size: median nucleus diameter the model sees, model pixels
_C.INPUT.SCALE.TEST_DIAMETER = 0.0  # object_size at test time: the inputs' nucleus diameter (0 = estimate)
_C.INPUT.SCALE.TRAIN_JITTER = (1.0, 1.0)  # training factor multiplied by U(lo, hi); (1, 1) = none
_C.INPUT.SCALE.MIN_OBJECT_PX = 4.0  # a median nucleus smaller than this at model scale is an error
_C.INPUT.SCALE.MAX_PIXELS = 64000000  # largest model input (H x W) predicted in one piece
# short_edge only (detectron2's resize; the seed report's stage configs use it):
_C.INPUT.MIN_SIZE_TRAIN = (640, 672, 704, 736, 768, 800)  # shortest-edge sizes for training
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice" or "range"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800  # 0 disables test-time resizing
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.CROP = CN()
_C.INPUT.CROP.ENABLED = False
_C.INPUT.CROP.TYPE = "relative_range"  # "relative", "relative_range", "absolute"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
_C.INPUT.RANDOM_FLIP = "horizontal"  # "none", "horizontal", "vertical", "both"
_C.INPUT.ROTATE90 = False  # random multiples of 90 degrees
_C.INPUT.INTENSITY = CN()
_C.INPUT.INTENSITY.ENABLED = False  # jitter applied to fluorescence channels only (never DIC)
_C.INPUT.INTENSITY.BRIGHTNESS = 0.1  # additive, fraction of the [0, 1] range
_C.INPUT.INTENSITY.CONTRAST = 0.1  # multiplicative, 1 +/- CONTRAST
_C.INPUT.INTENSITY.CHANNELS = ["pcna", "gray"]  # recipe names the jitter may touch

# Photometric augmentation (training only) of fluorescence channels, never otsu_mask; DIC gets
# the blur only with BLUR_DIC. Order: gamma, gain, offset, blur, noise, clip to [0, 1].
_C.INPUT.AUGMENT = CN()
_C.INPUT.AUGMENT.ENABLED = False
_C.INPUT.AUGMENT.GAMMA = (1.0, 1.0)  # x ** g, g log-uniform in (lo, hi)
_C.INPUT.AUGMENT.CONTRAST = (1.0, 1.0)  # gain x * c, c log-uniform in (lo, hi); > 1 saturates
_C.INPUT.AUGMENT.BRIGHTNESS = 0.0  # additive offset U(-b, b), fraction of the [0, 1] range
_C.INPUT.AUGMENT.BLUR_PROB = 0.0  # probability of a Gaussian blur (defocus)
_C.INPUT.AUGMENT.BLUR_SIGMA = (0.5, 1.5)  # its sigma, px at model scale, U(lo, hi)
_C.INPUT.AUGMENT.BLUR_DIC = False  # also blur DIC channels (nothing else ever touches DIC)
_C.INPUT.AUGMENT.NOISE_PROB = 0.0  # probability of additive Gaussian noise
_C.INPUT.AUGMENT.NOISE_STD = 0.0  # its sd, U(0, NOISE_STD), on the [0, 1] scale

# ---------------------------------------------------------------------------------------------
# DATASETS / DATALOADER
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()  # registered dataset names
_C.DATASETS.TEST = ()
# Where prepared datasets live: a folder of <name>/annotations.json (+ registry.yaml).
# "" means the PCNA_SEG_DATASETS environment variable, then ./datasets.
_C.DATASETS.ROOT = ""

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # blank images are allowed in training
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"  # the only one: an endless seeded shuffle (others are errors)

# ---------------------------------------------------------------------------------------------
# SOLVER (Mask R-CNN)
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0  # weight decay on normalisation-layer parameters
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"  # or "WarmupCosineLR"
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"  # "linear" or "constant"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.IMS_PER_BATCH = 16  # total over all processes
_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # "value" or "norm"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False  # mixed precision, CUDA only
_C.SOLVER.LOG_PERIOD = 20  # iterations between metrics.json / console / TensorBoard writes

# ---------------------------------------------------------------------------------------------
# TEST / evaluation
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EVAL_PERIOD = 0  # 0 = evaluate only at the end
_C.TEST.EVALUATORS = ["coco"]  # per test dataset (pcna_seg.evaluation.evaluator); "coco": AP, cells, phases
_C.TEST.DETECTIONS_PER_IMAGE = 100  # dense nuclei need >= 1000
_C.TEST.MAX_DETS = [1, 10, 100]  # COCOeval maxDets; raise for dense nuclei (e.g. [100, 300, 1000])
_C.TEST.CONFUSION_IOU = 0.5  # mask IoU for matching predictions to GT in the phase confusion
_C.TEST.CONFUSION_SCORE_THRESH = 0.5  # detections below this score are left out of the phase confusion

_C.OUTPUT_DIR = "./output"
_C.SEED = -1  # < 0: a seed is drawn and logged
_C.CUDNN_BENCHMARK = False  # torch.backends.cudnn.benchmark for training (both branches)

# ---------------------------------------------------------------------------------------------
# UNET: semantic segmentation branch (live/dead, small-UNet 3-class, counting)
# ---------------------------------------------------------------------------------------------
_C.UNET = CN()
_C.UNET.MODE = "livedead"  # "livedead" (bg/DAPI/Cy5), "contour" (bg/nucleus/contour), "count"
_C.UNET.CLASSES = ["background", "DAPI", "Cy5"]
_C.UNET.CHANNELS = ["hoechst", "draq7"]  # input channel names, in order
_C.UNET.ARCH = "unet"  # "unet" or "small_unet"
_C.UNET.DEPTH = 4  # number of down-sampling steps
_C.UNET.BASE_WIDTH = 32  # channels of the first level (doubles per level)
_C.UNET.BATCH_NORM = True
_C.UNET.DROPOUT = 0.0
_C.UNET.UPSAMPLE = "transpose"  # "transpose" or "bilinear" (bilinear + conv)
_C.UNET.WEIGHTS = ""  # checkpoint to start from

_C.UNET.TILING = CN()
_C.UNET.TILING.TILE = 160
_C.UNET.TILING.STRIDE = 80
_C.UNET.TILING.BOUNDARY_WIDTH = 2  # contour width for 3-class targets, pixels
_C.UNET.TILING.NORMALIZATION = "percentile"  # "percentile", "minmax", "none"
_C.UNET.TILING.PERCENTILES = [1.0, 99.8]
_C.UNET.TILING.CHUNK_TILES = 64  # HDF5 chunk length along the tile axis
_C.UNET.TILING.COMPRESSION = "lz4"  # labels: "none", "lz4", "blosc_lz4", "zstd", "gzip"
_C.UNET.TILING.DATA_COMPRESSION = "none"  # float16 image tiles (same choices; none reads fastest)
_C.UNET.TILING.VAL_FRACTION = 0.1  # validation share of source frames / wells
_C.UNET.TILING.MULTICLASS_ONLY = True  # keep only tiles with more than one class for training
_C.UNET.TILING.WORKERS = 2  # tiling processes (0 = tile in the main process)
_C.UNET.TILING.SPLIT_SEED = 0  # seed of the train/val split by well

_C.UNET.DATA = CN()
_C.UNET.DATA.TRAIN_H5 = ""
_C.UNET.DATA.VAL_H5 = ""
_C.UNET.DATA.AUGMENT = True  # flips, rot90, intensity jitter
_C.UNET.DATA.NUM_WORKERS = 2
_C.UNET.DATA.BATCH_SIZE = 100
_C.UNET.DATA.MIX_CHUNKS = 4  # training batches mix tiles of this many random HDF5 chunks
_C.UNET.DATA.COMPACT = True  # float16 images / uint8 targets per batch (4x less traffic), converted on device

_C.UNET.LOSS = CN()
_C.UNET.LOSS.NAME = "weighted_ce"  # "weighted_ce", "dice", "dice_ce", "bce"
_C.UNET.LOSS.CLASS_WEIGHTS = []  # [] = from class frequencies in the HDF5 class_counts

_C.UNET.SOLVER = CN()
_C.UNET.SOLVER.OPTIMIZER = "sgd"  # "sgd" or "adam"
_C.UNET.SOLVER.BASE_LR = 0.01
_C.UNET.SOLVER.MOMENTUM = 0.9
_C.UNET.SOLVER.WEIGHT_DECAY = 0.0001
_C.UNET.SOLVER.EPOCHS = 100
_C.UNET.SOLVER.SCHEDULER = "cosine_kicks"  # "cosine_restarts", "plateau", "cosine_kicks", "none"
_C.UNET.SOLVER.T_0 = 10  # cosine cycle length, epochs
_C.UNET.SOLVER.T_MULT = 1
_C.UNET.SOLVER.ETA_MIN = 1.0e-5
_C.UNET.SOLVER.PATIENCE = 5  # plateau / kick patience, epochs
_C.UNET.SOLVER.FACTOR = 0.5  # plateau decay factor; kicks: new minimum = FACTOR * old minimum
_C.UNET.SOLVER.KICK = 0.5  # kick: LR jumps up by this fraction of the cycle's start LR
_C.UNET.SOLVER.THRESHOLD = 1.0e-4
_C.UNET.SOLVER.COOLDOWN = 0
_C.UNET.SOLVER.AMP = False
_C.UNET.SOLVER.CHECKPOINT_PERIOD = 1  # epochs
_C.UNET.SOLVER.MONITOR = "val_loss"  # metrics.json key watched by plateau/kicks and model_best (loss: min)

_C.UNET.EVAL = CN()
_C.UNET.EVAL.PR_THRESHOLDS = 101  # bins for constant-memory PR curves
_C.UNET.EVAL.OVERLAY_PERIOD = 1  # epochs between overlay frames of fixed validation tiles
_C.UNET.EVAL.OVERLAY_TILES = 8
_C.UNET.EVAL.VIDEO_FPS = 4  # frames per second of the overlay video (one frame per overlay epoch)

_C.UNET.INFER = CN()
_C.UNET.INFER.TILE = 256
_C.UNET.INFER.OVERLAP = 64
_C.UNET.INFER.BLEND = "gaussian"  # "gaussian" or "cosine"
_C.UNET.INFER.THRESHOLD = 0.5  # counting mode: sigmoid threshold
_C.UNET.INFER.BATCH_SIZE = 8  # tiles per forward pass during whole-frame inference
_C.UNET.INFER.INSTANCES = "watershed"  # nuclei for counts: "watershed" (splits touching) or "components"
_C.UNET.INFER.MIN_SIZE = 10  # objects smaller than this (pixels) are not counted
_C.UNET.INFER.SAVE_PROBS = False  # also write float16 probability maps (K, H, W)

# ---------------------------------------------------------------------------------------------
# CAMPAIGN: staged fine-tuning runs as one command
# ---------------------------------------------------------------------------------------------
_C.CAMPAIGN = CN()
_C.CAMPAIGN.NAME = ""
_C.CAMPAIGN.STAGES = []  # stage config files (relative to the campaign file), run in order
_C.CAMPAIGN.STAGE_OPTS = []  # optional, one string per stage: "KEY VALUE KEY VALUE" overrides
_C.CAMPAIGN.CHAIN_WEIGHTS = True  # stage k starts from stage k-1's model_final.pth
_C.CAMPAIGN.EXECUTOR = "local"  # "local" (run now) or "pbs" (write qsub scripts chained by afterok)
_C.CAMPAIGN.STAGE_NAMES = []  # optional, one label per stage (folder <k>_<label>); default: file stem
# optional, one per stage: "" default, "none" random init, "<k>" stage k's final weights, or a file
_C.CAMPAIGN.START_FROM = []
_C.CAMPAIGN.SEEDS = []  # [] = one run; [0, 1, 2] repeats the campaign per SEED into OUTPUT_DIR/seed<s>/
_C.CAMPAIGN.PBS_RESOURCES = "select=1:ncpus=8:ngpus=1,walltime=24:00:00"  # #PBS -l line


# ---------------------------------------------------------------------------------------------
# Value constraints: values outside these intervals can only be mistakes and are refused at
# config load (pcna_seg.config.config.check_value_ranges). Interval notation: "[" / "]" include
# the bound, "(" / ")" exclude it, "inf" is unbounded. A sequence value is checked element-wise.
# Cross-key rules (SOLVER.STEPS ascending and < MAX_ITER, channel counts) are in validate_config.
# ---------------------------------------------------------------------------------------------
VALUE_RANGES: dict[str, str] = {
    "VERSION": "[2, 2]",  # detectron2 config format 2, the only one whose key names are used
    "MODEL.BACKBONE.FREEZE_AT": "[0, 5]",
    "MODEL.FPN.OUT_CHANNELS": "[1, inf)",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": "[1, inf)",
    "MODEL.RPN.POSITIVE_FRACTION": "(0, 1]",
    "MODEL.RPN.NMS_THRESH": "[0, 1]",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": "[1, inf)",
    "MODEL.RPN.PRE_NMS_TOPK_TEST": "[1, inf)",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": "[1, inf)",
    "MODEL.RPN.POST_NMS_TOPK_TEST": "[1, inf)",
    "MODEL.RPN.IOU_THRESHOLDS": "[0, 1]",
    "MODEL.ROI_HEADS.NUM_CLASSES": "[1, inf)",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "[1, inf)",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": "(0, 1]",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": "[0, 1]",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": "[0, 1]",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": "[0, 1]",
    "MODEL.ROI_BOX_HEAD.FC_DIM": "[1, inf)",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": "[1, inf)",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": "[0, inf)",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": "[0, inf)",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": "[0, inf)",
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "[0, inf)",
    "MODEL.ANCHOR_GENERATOR.OFFSET": "[0, 1)",
    "MODEL.ROI_MASK_HEAD.CONV_DIM": "[1, inf)",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": "[1, inf)",
    "INPUT.SATURATION.LOW": "[0, 100]",
    "INPUT.SATURATION.HIGH": "[0, 100]",
    "INPUT.SATURATION.GAMMA": "(0, inf)",
    "INPUT.OTSU.SIGMA": "[0, inf)",
    "INPUT.SCALE.FACTOR": "(0, inf)",
    "INPUT.SCALE.DIAMETER": "[0, inf)",
    "INPUT.SCALE.TEST_DIAMETER": "[0, inf)",
    "INPUT.SCALE.TRAIN_JITTER": "(0, inf)",
    "INPUT.SCALE.MIN_OBJECT_PX": "[0, inf)",
    "INPUT.SCALE.MAX_PIXELS": "[0, inf)",
    "INPUT.MIN_SIZE_TRAIN": "[1, inf)",
    "INPUT.MAX_SIZE_TRAIN": "[1, inf)",
    "INPUT.MIN_SIZE_TEST": "[0, inf)",
    "INPUT.MAX_SIZE_TEST": "[1, inf)",
    "INPUT.CROP.SIZE": "(0, inf)",
    "INPUT.INTENSITY.BRIGHTNESS": "[0, 1]",
    "INPUT.INTENSITY.CONTRAST": "[0, 1)",
    "INPUT.AUGMENT.GAMMA": "(0, inf)",
    "INPUT.AUGMENT.CONTRAST": "(0, inf)",
    "INPUT.AUGMENT.BRIGHTNESS": "[0, 1]",
    "INPUT.AUGMENT.BLUR_PROB": "[0, 1]",
    "INPUT.AUGMENT.BLUR_SIGMA": "[0, inf)",
    "INPUT.AUGMENT.NOISE_PROB": "[0, 1]",
    "INPUT.AUGMENT.NOISE_STD": "[0, 1]",
    "DATALOADER.NUM_WORKERS": "[0, inf)",
    "SOLVER.MAX_ITER": "[1, inf)",
    "SOLVER.BASE_LR": "(0, inf)",
    "SOLVER.MOMENTUM": "[0, 1)",
    "SOLVER.WEIGHT_DECAY": "[0, inf)",
    "SOLVER.WEIGHT_DECAY_NORM": "[0, inf)",
    "SOLVER.GAMMA": "(0, inf)",
    "SOLVER.STEPS": "[1, inf)",
    "SOLVER.WARMUP_FACTOR": "[0, 1]",
    "SOLVER.WARMUP_ITERS": "[0, inf)",
    "SOLVER.CHECKPOINT_PERIOD": "[1, inf)",
    "SOLVER.IMS_PER_BATCH": "[1, inf)",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "(0, inf)",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "(0, inf)",
    "SOLVER.LOG_PERIOD": "[1, inf)",
    "TEST.EVAL_PERIOD": "[0, inf)",
    "TEST.DETECTIONS_PER_IMAGE": "[1, inf)",
    "TEST.MAX_DETS": "[1, inf)",
    "TEST.CONFUSION_IOU": "[0, 1]",
    "TEST.CONFUSION_SCORE_THRESH": "[0, 1]",
    "UNET.DEPTH": "[1, inf)",
    "UNET.BASE_WIDTH": "[1, inf)",
    "UNET.DROPOUT": "[0, 1)",
    "UNET.TILING.TILE": "[1, inf)",
    "UNET.TILING.STRIDE": "[1, inf)",
    "UNET.TILING.BOUNDARY_WIDTH": "[0, inf)",
    "UNET.TILING.PERCENTILES": "[0, 100]",
    "UNET.TILING.CHUNK_TILES": "[1, inf)",
    "UNET.TILING.VAL_FRACTION": "[0, 1)",
    "UNET.TILING.WORKERS": "[0, inf)",
    "UNET.DATA.NUM_WORKERS": "[0, inf)",
    "UNET.DATA.BATCH_SIZE": "[1, inf)",
    "UNET.DATA.MIX_CHUNKS": "[1, inf)",
    "UNET.LOSS.CLASS_WEIGHTS": "[0, inf)",
    "UNET.SOLVER.BASE_LR": "(0, inf)",
    "UNET.SOLVER.MOMENTUM": "[0, 1)",
    "UNET.SOLVER.WEIGHT_DECAY": "[0, inf)",
    "UNET.SOLVER.EPOCHS": "[1, inf)",
    "UNET.SOLVER.T_0": "[1, inf)",
    "UNET.SOLVER.T_MULT": "[1, inf)",
    "UNET.SOLVER.ETA_MIN": "[0, inf)",
    "UNET.SOLVER.PATIENCE": "[0, inf)",
    "UNET.SOLVER.FACTOR": "(0, 1]",
    "UNET.SOLVER.KICK": "[0, inf)",
    "UNET.SOLVER.THRESHOLD": "[0, inf)",
    "UNET.SOLVER.COOLDOWN": "[0, inf)",
    "UNET.SOLVER.CHECKPOINT_PERIOD": "[1, inf)",
    "UNET.EVAL.PR_THRESHOLDS": "[2, inf)",
    "UNET.EVAL.OVERLAY_TILES": "[0, inf)",
    "UNET.EVAL.VIDEO_FPS": "(0, inf)",
    "UNET.INFER.TILE": "[1, inf)",
    "UNET.INFER.OVERLAP": "[0, inf)",
    "UNET.INFER.THRESHOLD": "[0, 1]",
    "UNET.INFER.BATCH_SIZE": "[1, inf)",
    "UNET.INFER.MIN_SIZE": "[0, inf)",
}


def get_default_config() -> CN:
    """Return a fresh, mutable copy of the defaults."""
    return _C.clone()
