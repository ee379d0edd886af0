"""The papers' training protocols (and ferlab's own) as named sets of `ferlab train` options.

A recipe fills every option the paper states; command-line options given explicitly override
it. Where a paper is silent, the value is Keras' default (the papers' framework) and the
comment says so. `ferlab recipes` prints them.
"""

from ferlab.errors import FerlabError

FER2013_OFFICIAL = {"train_splits": "Training", "val_splits": "PublicTest", "test_splits": "PrivateTest"}

RECIPES = {
    # triwijoyo2021: Adam 1e-3, categorical cross-entropy, 20 epochs, train on 32,298 rows
    # (Training + PublicTest), validate on 3,589 (PrivateTest). Batch size not stated: Keras' 32.
    "triwijoyo2021": dict(model="triwijoyo2021", optimizer="adam", lr=1e-3, epochs=20, batch_size=32,
                          train_splits="Training,PublicTest", val_splits="PrivateTest", test_splits=""),
    "triwijoyo2021_nobn": dict(model="triwijoyo2021_nobn", optimizer="adam", lr=1e-3, epochs=20, batch_size=32,
                               train_splits="Training,PublicTest", val_splits="PrivateTest", test_splits=""),
    # sarmah2023 final training: Adam 1e-4 constant, 150 epochs, batch 32, zoom 0.1, rotation 10,
    # shift 0.1, horizontal flip. Test accuracy reported on FER2013's test split.
    "sarmah2023": dict(model="sarmah2023_8conv", optimizer="adam", lr=1e-4, epochs=150, batch_size=32,
                       augment="sarmah2023", **FER2013_OFFICIAL),
    # The paper's SGD-Nesterov comparison; neither value stated: lr 0.01 is Keras' SGD default, momentum 0.9 is ours
    # (Keras' default momentum 0 would make Nesterov a no-op).
    "sarmah2023_sgd": dict(model="sarmah2023_8conv", optimizer="sgd", lr=1e-2, momentum=0.9, epochs=150,
                           batch_size=32, augment="sarmah2023", **FER2013_OFFICIAL),
    # sarmah2023's 5-conv model, trained for 300 epochs.
    "sarmah2023_5conv": dict(model="sarmah2023_5conv", optimizer="adam", lr=1e-4, epochs=300, batch_size=32,
                             augment="sarmah2023", **FER2013_OFFICIAL),
    # bah2022: Nadam 1e-3 (0.9/0.999), batch 64, 100 epochs, class-weighted cross-entropy,
    # ReduceLROnPlateau on val accuracy (patience 15, min_lr 1e-6; factor not stated: Keras' 0.1),
    # EarlyStopping patience 30 (monitor not stated: Keras' val_loss), best-val-accuracy checkpoint;
    # flip/rotation/shift/zoom/brightness.
    # Data: FERGIT split 90/5/5 (`--data fergit:FER2013_CSV,MUXSPACE_DIR`).
    "bah2022": dict(model="bah2022_resnet", optimizer="nadam", lr=1e-3, epochs=100, batch_size=64,
                    class_weights="balanced", schedule="plateau", plateau_monitor="val_acc", plateau_factor=0.1,
                    plateau_patience=15, min_lr=1e-6, early_stop_monitor="val_loss", early_stop_patience=30,
                    augment="bah2022", train_splits="train", val_splits="val", test_splits="test"),
    "bah2022_basic": dict(model="bah2022_basic", optimizer="nadam", lr=1e-3, epochs=100, batch_size=64,
                          class_weights="balanced", schedule="plateau", plateau_monitor="val_acc", plateau_factor=0.1,
                          plateau_patience=15, min_lr=1e-6, early_stop_monitor="val_loss", early_stop_patience=30,
                          augment="bah2022", train_splits="train", val_splits="val", test_splits="test"),
    # li2023: Adam 1e-3, augmentation, trained for 20/40/60/80/100 epochs (--epochs). Batch not stated: 32.
    "li2023": dict(model="li2023", optimizer="adam", lr=1e-3, epochs=20, batch_size=32, augment="li2023",
                   **FER2013_OFFICIAL),
    # ferlab's own: SGD-Nesterov with a one-cycle LR, weight decay, label smoothing, batched affine
    # augmentation + random erasing, EMA of weights, bf16 autocast. Built for time-to-accuracy on a CPU.
    "fernet": dict(model="fernet_s", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=40,
                   batch_size=128, schedule="onecycle", label_smoothing=0.1, augment="fernet", ema=0.998,
                   **FER2013_OFFICIAL),
    # The same recipe for FERNet-M, run longer: the bundled default since v0.2.
    "fernet_m": dict(model="fernet_m", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, epochs=70,
                     batch_size=128, schedule="onecycle", label_smoothing=0.1, augment="fernet", ema=0.998,
                     **FER2013_OFFICIAL),
}


def get_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise FerlabError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return dict(RECIPES[name])


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="show one recipe in full")


def run(args) -> int:
    names = [args.name] if args.name else list(RECIPES)
    for name in names:
        recipe = get_recipe(name)
        if args.name:
            for key, value in recipe.items():
                print(f"{key:20s} {value}")
        else:
            print(f"{name:20s} model={recipe['model']} {recipe['optimizer']} lr={recipe['lr']} "
                  f"epochs={recipe['epochs']} batch={recipe['batch_size']} augment={recipe.get('augment', 'none')}")
    return 0
