"""COCO object classes by the category ids the TF Object Detection API uses (1-90, with gaps).

Detectors served with the Object Detection API signature answer these ids in `detection_classes`,
so inference can name what it saw without knowing which detector it asked.
"""

from __future__ import annotations

_NAMES = (  # space-separated, in contiguous order
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter bench bird cat dog "
    "horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich "
    "orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
)
# The 80 classes in their usual contiguous order (what most detectors' heads predict), as COCO ids.
CONTIGUOUS_TO_COCO_ID = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79,
    80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
PERSON = 1
# COCO's 17 person keypoints, in the order pose models answer them.
KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
             "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")


def coco_names() -> dict[int, str]:
    """COCO id -> class name with underscores (`cell_phone`)."""
    return dict(zip(CONTIGUOUS_TO_COCO_ID, _NAMES.split(), strict=True))
