"""Batched training of many small classifiers for the audit's runs.

An audit trains the same small model R times, each run on the private set with its own half of
the canaries, and attacks every run. On a CPU the models are far too small to keep the cores busy
one at a time, so these modules train all R runs *together* as one batched model: the parameters
of the R runs are stacked along a leading axis and the forward pass is ``torch.func.vmap`` over a
``torch.func.functional_call`` of one template module (on the ``meta`` device: it holds no
weights). Membership is a per-run 0/1 weight mask over the training examples.

Each run is exactly the training it would get on its own (``tests/test_trainer.py`` checks run k
of a batch against a batch holding only run k): its own initialisation, minibatch order,
augmentation and (DP-SGD) sampling and noise, each from a ``torch.Generator`` derived from the
run's seed and the purpose of the draw (no global RNG), and its own schedule.

Modules, one job each:

* ``seeding``: the per-run, per-purpose random generators;
* ``models``: ``TrainSpec``, the architectures (MLP, CNN), their meta-device templates and init;
* ``device``: the device a spec trains on, and the one a Ray task holds;
* ``augment``: random shifts and flips of image batches, and LiRA's query set;
* ``batched``: the R runs stacked (inputs checked, parameters initialised), the stacked
  optimizer with per-run freezing, and ``BatchedModel``, the trained result;
* ``train``: plain batched training (``train_batched``);
* ``dpsgd``: per-example clipping, noise and the DP-SGD loop (``train_batched_dpsgd``);
* ``accounting``: DP-SGD accounting (opacus): an accountant per run, calibration of the noise.

The DP-SGD noise here is seeded from the run's seed on purpose: audit runs are experiments that
must be reproducible and resumable, and the adversary of an audit does not get the seed. A model
released under DP must draw its noise from OS entropy instead (privevo's rule for releases); this
package is for audits, not for releasing models.
"""
