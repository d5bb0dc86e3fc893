"""Blobs: a privevo generator plugin in 30 lines (one Gaussian blob per image).

A sample's parameters are its blob's centre; ``variation`` moves the centre by a normal step of
``degree`` (in [0, 1]) times a quarter of the image's side.
"""

import numpy as np
from pydantic import BaseModel

from privevo import SampleBatch


class BlobGenerator:
    modality = "image"

    class Options(BaseModel, extra="forbid"):  # what `generator.options` may hold
        width: float = 1.5

    def __init__(self, options, context):  # context: the public description of the data
        self.width, self.top, self.shape = options.width, context.max_value, context.sample_shape[:2]

    def draw(self, labels, centres):
        y, x = np.mgrid[0:self.shape[0], 0:self.shape[1]]
        d2 = (y - centres[:, 0, None, None]) ** 2 + (x - centres[:, 1, None, None]) ** 2
        images = self.top * np.exp(-d2 / (2 * self.width**2))
        return SampleBatch(labels=labels, samples=images.astype(np.float32), params={"centre": centres})

    def random(self, labels, seed):
        rng = np.random.default_rng(seed)
        return self.draw(labels, rng.uniform(0, np.array(self.shape) - 1, size=(len(labels), 2)))

    def variation(self, parents, degree, seed):
        step = degree * np.array(self.shape) / 4 * np.random.default_rng(seed).normal(size=(len(parents), 2))
        moved = parents.params["centre"] + step
        return self.draw(parents.labels, np.clip(moved, 0, np.array(self.shape) - 1))
