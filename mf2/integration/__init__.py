"""How mf2 plugs into its surroundings: transformers' Auto* classes and pipeline registry (`registration`, through
the import hooks of `import_hooks`), the light package import (`lazy_module`), the shipped model's short names
(`default_model`) and the offline pretrained encoders taken from PyPI wheels (`encoders`)."""
