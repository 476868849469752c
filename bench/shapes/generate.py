#!/usr/bin/env python3
"""Writes the parameter shape lists of bench/shapes/ (resnet50.txt, vgg16.txt, bert-base.txt).

The architectures are spelled out here instead of being imported (torchvision and transformers
are not Debian packages); names and registration order follow torchvision 0.14 and HuggingFace
transformers 4.x exactly, so a file line is what `model.named_parameters()` yields there.
Files list the tensors in BACKWARD order (the reverse of registration order, which is the order
gradients become ready and the order PyTorch DDP buckets them).

Run from anywhere: python3 bench/shapes/generate.py  (standard library only).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def resnet50():
    """torchvision.models.resnet50(): Bottleneck blocks [3, 4, 6, 3], 1000 classes."""
    params = []

    def conv(name, out_c, in_c, k):
        params.append((name + ".weight", [out_c, in_c, k, k]))  # bias=False everywhere

    def bn(name, c):
        params.append((name + ".weight", [c]))
        params.append((name + ".bias", [c]))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_c = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        out_c = width * 4  # Bottleneck.expansion
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(p + ".conv1", width, in_c, 1)
            bn(p + ".bn1", width)
            conv(p + ".conv2", width, width, 3)
            bn(p + ".bn2", width)
            conv(p + ".conv3", out_c, width, 1)
            bn(p + ".bn3", out_c)
            if b == 0:  # stride or channel change: 1x1 projection shortcut
                conv(p + ".downsample.0", out_c, in_c, 1)
                bn(p + ".downsample.1", out_c)
            in_c = out_c
    params.append(("fc.weight", [1000, 2048]))
    params.append(("fc.bias", [1000]))
    return params


def vgg16():
    """torchvision.models.vgg16() (configuration D, no batch norm) with its classifier."""
    params = []
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    in_c, index = 3, 0
    for v in cfg:
        if v == "M":
            index += 1  # MaxPool2d
            continue
        params.append((f"features.{index}.weight", [v, in_c, 3, 3]))
        params.append((f"features.{index}.bias", [v]))
        index += 2  # Conv2d, ReLU
        in_c = v
    # classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    for index, (out_f, in_f) in zip([0, 3, 6], [(4096, 512 * 7 * 7), (4096, 4096), (1000, 4096)]):
        params.append((f"classifier.{index}.weight", [out_f, in_f]))
        params.append((f"classifier.{index}.bias", [out_f]))
    return params


def bert_base():
    """transformers.BertModel(BertConfig()) = bert-base-uncased: embeddings, 12 layers, pooler.

    Without the pre-training heads (BertForMaskedLM's cls.predictions adds a transform and a
    decoder bias and ties the decoder weight to the word embeddings).
    """
    hidden, inter, vocab, positions, types, layers = 768, 3072, 30522, 512, 2, 12
    params = []

    def linear(name, out_f, in_f):
        params.append((name + ".weight", [out_f, in_f]))
        params.append((name + ".bias", [out_f]))

    def layer_norm(name):
        params.append((name + ".weight", [hidden]))
        params.append((name + ".bias", [hidden]))

    params.append(("embeddings.word_embeddings.weight", [vocab, hidden]))
    params.append(("embeddings.position_embeddings.weight", [positions, hidden]))
    params.append(("embeddings.token_type_embeddings.weight", [types, hidden]))
    layer_norm("embeddings.LayerNorm")
    for i in range(layers):
        p = f"encoder.layer.{i}"
        linear(p + ".attention.self.query", hidden, hidden)
        linear(p + ".attention.self.key", hidden, hidden)
        linear(p + ".attention.self.value", hidden, hidden)
        linear(p + ".attention.output.dense", hidden, hidden)
        layer_norm(p + ".attention.output.LayerNorm")
        linear(p + ".intermediate.dense", inter, hidden)
        linear(p + ".output.dense", hidden, inter)
        layer_norm(p + ".output.LayerNorm")
    linear("pooler.dense", hidden, hidden)
    return params


MODELS = {
    "resnet50": (resnet50, "torchvision.models.resnet50() (ImageNet, 1000 classes)"),
    "vgg16": (vgg16, "torchvision.models.vgg16() (configuration D, with classifier)"),
    "bert-base": (bert_base, "transformers.BertModel(BertConfig()) = bert-base-uncased with "
                  "pooler, without the MLM/NSP heads"),
}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def write(name):
    build, source = MODELS[name]
    params = build()
    total = sum(numel(s) for _, s in params)
    path = os.path.join(HERE, name + ".txt")
    with open(path, "w") as f:
        f.write(f"# {name}: parameter tensors of {source}.\n")
        f.write(f"# {len(params)} tensors, {total} parameters (f32: {total * 4} bytes).\n")
        f.write("# Order: BACKWARD (reverse of registration order = when gradients become ready).\n")
        f.write("# Format: one tensor per line, `name dim0 dim1 ...`; '#' starts a comment.\n")
        f.write("# Generated by bench/shapes/generate.py; do not edit by hand.\n")
        for pname, shape in reversed(params):
            f.write(pname + " " + " ".join(str(d) for d in shape) + "\n")
    print(f"{path}: {len(params)} tensors, {total} parameters")


if __name__ == "__main__":
    for model in sys.argv[1:] or MODELS:
        write(model)
