"""Fused training: the members of a sweep group (copies of one network that differ in a few numbers)
trained as one stacked model.

`stacking` turns the members' modules into one `StackedModel` of batched layers whose parameters
the members' own modules then view; `batches` cuts every member's batch from the shared,
device-resident data; `objectives` scores each member on its own batch; `optim` steps every
member's optimizer; `loop` is the fused epoch (forward, loss, backward, step for all members at
once) and the fused evaluation. dlrun.run.fused_train drives them for a sweep group.
"""
