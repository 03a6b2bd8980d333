"""Stand-in for comfy.patcher_extension: wrapper lists in transformer_options and their executor."""


class WrappersMP:
    PREPARE_SAMPLING = "prepare_sampling"
    DIFFUSION_MODEL = "diffusion_model"


def get_all_wrappers(wrapper_type, transformer_options, is_model_options=False) -> list:
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    keyed = transformer_options.get("wrappers", {}).get(wrapper_type, {})
    return [wrapper for wrappers in keyed.values() for wrapper in wrappers]


class WrapperExecutor:
    """Call each wrapper with an executor for the rest of the chain, then the original function."""

    def __init__(self, original, class_obj, wrappers, idx=0) -> None:
        self.original = original
        self.class_obj = class_obj
        self.wrappers = list(wrappers)
        self.idx = idx

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, wrappers, idx)

    def __call__(self, *args, **kwargs):
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.idx == len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)
