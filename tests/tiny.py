"""The tiny setting that the search, ablation and distributed tests share: the 16 px, width-8
custom backbone of spaces/custom_backbone.yaml on 96 generated images, so an epoch takes well
under a second. Each test file adds the batch and budget it needs."""

TINY = [
    "backbone.input_size=16",
    "backbone.kwargs.width=8",
    "data.embedded.image_size=16",
    "data.embedded.train_size=96",
    "data.embedded.test_size=32",
]
