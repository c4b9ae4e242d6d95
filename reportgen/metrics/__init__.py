"""Metrics that score saliency maps: "which map to believe".

Pure computations, one module per family, each a set of plain functions of
(forward, inputs, maps, targets) returning numpy arrays or small frozen dataclasses per input;
aggregation, configuration and drawing happen elsewhere (the `evaluation` stage and its section).

- `perturbation`: deletion / insertion (RISE), ROAD (pytorch-grad-cam), confidence change
  (pytorch-grad-cam's `CamMultImageConfidenceChange`, torch-cam's Average Drop / Increase);
- `robustness`: Captum's `infidelity` (normalised) and `sensitivity_max`;
- `localisation`: pointing game, energy-based pointing game, IoU of the top 15 % with a box or mask;
- `sanity`: cascading model-parameter randomisation (Adebayo et al. 2018; Quantus's MPRT order);
- `regions`: a segmenter's class-in-region probability, the score the perturbation metrics read for it.

Scores of the predictions, not of maps, by task: `segmentation` (a streamed pixel confusion matrix: IoU, mIoU,
pixel accuracy, as torchmetrics) and `detection` (COCO's AP and AR, streamed per image, as pycocotools' COCOeval).

`columns` is the evaluation's metric registry (one record per column of its table) and `scoring` its scorers,
one per metric, over one batch's maps; the `evaluation` stage (`reportgen.stages.evaluation`) runs them over a
build's maps; `forward` makes the fast no-grad forward they run on.
"""
