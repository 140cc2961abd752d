"""Making and judging a model: data sets, augmentation, training, evaluation, metrics,
plots and the model card.

Imports :mod:`models` (the model itself) and :mod:`models.imaging` (to read image files),
plus :mod:`index` in evaluation only, to time searches in the service's own index; the
service never imports this package.
"""
