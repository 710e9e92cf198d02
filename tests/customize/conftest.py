import pytest


def make_expert(base_path, out, seed, r=4, targets=("q_proj", "v_proj"), alpha=8):
    """A LoRA adapter with random A and B (as if trained), saved in peft format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    model = get_peft_model(model, cfg)
    with torch.no_grad():  # B of a trained expert is not tiny; make the deltas visible
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(3.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def experts(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return {
        f"cluster_{k}": make_expert(tiny_model_path, root / f"cluster_{k}", seed=k)
        for k in range(3)
    }
