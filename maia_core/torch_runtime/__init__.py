"""The torch runtime: PyTorch targets read through forward hooks, SAE and direction bases, and
exemplar computation. Imported where models live (the model host, ``maia layers``,
``maia exemplars``), never during plugin discovery."""
