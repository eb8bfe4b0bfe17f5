"""IoU between predicted and ground-truth lesions, and the one-to-one greedy matching.

Boxes are ``(N, 4)`` XYXY in absolute pixels of the dataset image. Masks are COCO RLEs
(pycocotools) of the same image, so that an IoU matrix of a slice with many lesions does not
hold ``N x H x W`` arrays in memory.
"""

from typing import List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Boxes, pairwise_iou


def box_iou_matrix(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Compute the ``(P, G)`` IoU of predicted and ground-truth boxes, both ``(N, 4)`` XYXY px."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return np.zeros((len(pred_boxes), len(gt_boxes)), dtype=np.float64)
    iou = pairwise_iou(
        Boxes(torch.as_tensor(pred_boxes, dtype=torch.float64)),
        Boxes(torch.as_tensor(gt_boxes, dtype=torch.float64)),
    )
    return iou.numpy()


def mask_iou_matrix(pred_rles: Sequence[dict], gt_rles: Sequence[dict]) -> np.ndarray:
    """Compute the ``(P, G)`` IoU of predicted and ground-truth masks given as COCO RLEs."""
    if len(pred_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(pred_rles), len(gt_rles)), dtype=np.float64)
    iou = mask_util.iou(list(pred_rles), list(gt_rles), [0] * len(gt_rles))
    return np.asarray(iou, dtype=np.float64).reshape(len(pred_rles), len(gt_rles))


def greedy_match(iou: np.ndarray, scores: np.ndarray, iou_thresh: float) -> List[Tuple[int, int]]:
    """Match predictions to ground-truth lesions one to one, greedily by descending score.

    Predictions are visited from the highest score down (ties keep the input order). Each
    takes the still unmatched ground-truth lesion with which its IoU is largest, provided that
    IoU is strictly greater than ``iou_thresh``; otherwise it stays unmatched (a false positive).

    Args:
        iou: ``(P, G)`` IoU of every prediction with every ground-truth lesion.
        scores: ``(P,)`` prediction scores.
        iou_thresh: an IoU must exceed this value for a match.

    Returns:
        ``(prediction index, ground-truth index)`` pairs in visiting order.
    """
    num_pred, num_gt = iou.shape
    if len(scores) != num_pred:
        raise ValueError(f"scores has {len(scores)} entries but the IoU matrix has {num_pred} rows")

    if num_gt == 0:
        return []

    gt_taken = np.zeros(num_gt, dtype=bool)
    matches = []
    for pred_index in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        candidate_iou = np.where(gt_taken, -1.0, iou[pred_index])
        gt_index = int(np.argmax(candidate_iou))
        if candidate_iou[gt_index] > iou_thresh:
            gt_taken[gt_index] = True
            matches.append((int(pred_index), gt_index))
    return matches
