"""Datasets: loaders that return `DataSplits`, and the train/val/test loaders built from them (`dlrun.data.build`).

Kept free of imports so that `import dlrun` (which registers `dlrun.data.resolvers`) does not load torch.
"""
