"""Training steps: SFT and DPO (TRL) in this process or launched on several (accelerate, DDP or DeepSpeed), and
the reward models the worlds train.

* :mod:`.config` -- a leaf: the steps' parameters, the launch's, and the spec a launched process runs.
* :mod:`.sft`, :mod:`.dpo` -- the steps the method packages call: here, or under a launch on several processes.
* :mod:`.sft_trainer`, :mod:`.dpo_trainer` -- the steps in this process (TRL's trainers).
* :mod:`.launch` -- ``accelerate launch``, its worker and reading the result back; a custom trainer (HbAT's EWC)
  comes as a ``"module:attr"`` plugin named in the spec.
* :mod:`.runtime` -- quiet logs, the GPU freed of sampling engines, fp32 master weights.
* :mod:`.reward_model` -- a Bradley-Terry reward model with TRL's RewardTrainer.
"""
