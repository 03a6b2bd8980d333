"""Stand-in for comfy.patcher_extension: a wrapper executor with no wrappers."""


class WrappersMP:
    DIFFUSION_MODEL = "diffusion_model"


def get_all_wrappers(wrapper_type, transformer_options, is_model_options=False) -> list:
    return []


class WrapperExecutor:
    def __init__(self, original, class_obj, wrappers) -> None:
        self.original = original

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, wrappers)

    def execute(self, *args, **kwargs):
        return self.original(*args, **kwargs)
