"""The markers transformers' common test mixins put on their tests (registered in transformers' own conftest)."""

MIXIN_MARKERS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test")


def pytest_configure(config):
    for name in MIXIN_MARKERS:
        config.addinivalue_line("markers", f"{name}: a marker of transformers' common test mixins")
