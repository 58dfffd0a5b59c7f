"""Write the small LEAF-format stand-ins shipped in scenarios/leaf/ (deterministic; rerun to check).

    python scenarios/leaf/make_samples.py

These are NOT LEAF's data. They are tiny files in LEAF's JSON format, so that
scenarios/leaf_femnist.yaml and scenarios/leaf_shakespeare.yaml run from a fresh clone:

- femnist/: scikit-learn's bundled 8x8 digits, upsampled to 28x28 by bilinear interpolation
  and stored as LEAF's FEMNIST stores pixels (grey / 255: white background = 1.0, ink near 0),
  grouped into 20 pseudo-writers with label-skewed shares (Dirichlet(0.5) over the 10 digits);
  each writer's images are split 80/20 into train/ and test/.
- shakespeare/: lines of eight characters from Shakespeare's plays (public domain), written
  out below; each character is a user, whose samples are the 80-character windows of its
  lines and the character after each, split 80/20 at random into train/ and test/.

Docs: docs/datasets.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling matrix (pixel centres aligned)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    w = np.clip(pos - lo, 0.0, 1.0)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def _num(v: float) -> float | int:
    r = round(float(v), 2)
    return int(r) if r == int(r) else r  # "1" and "0" instead of "1.0": a third of the file


def _write(folder: Path, name: str, users: dict[str, dict[str, list]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(users)
    doc = {"users": names, "num_samples": [len(users[u]["y"]) for u in names],
           "user_data": {u: users[u] for u in names}}
    (folder / name).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


def femnist(out: Path = HERE, writers: int = 20, per_writer: int = 14, seed: int = 0) -> None:
    """The digits stand-in for FEMNIST (see the module docstring)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    x, y = load_digits(return_X_y=True)
    m = _interp_matrix(8, 28)
    imgs = 1.0 - np.einsum("ij,njk,lk->nil", m, x.reshape(-1, 8, 8) / 16.0, m)  # LEAF: background = 1
    by_label = [list(rng.permutation(np.nonzero(y == c)[0])) for c in range(10)]
    train, test = {}, {}
    for w in range(writers):
        share = rng.dirichlet(np.full(10, 0.5))
        n = int(rng.integers(per_writer // 2, per_writer * 3 // 2 + 1))
        labels = rng.choice(10, size=n, p=share)
        rows = [by_label[c].pop() for c in labels if by_label[c]]
        xs = [[_num(v) for v in imgs[r].reshape(-1)] for r in rows]
        ys = [int(y[r]) for r in rows]
        cut = max(1, int(round(0.8 * len(rows))))
        user = f"f{w:04d}_{int(rng.integers(10, 99))}"  # FEMNIST-like writer ids
        train[user] = {"x": xs[:cut], "y": ys[:cut]}
        test[user] = {"x": xs[cut:], "y": ys[cut:]}
    _write(out / "femnist" / "train", "all_data_0_niid_0_keep_0_train_8.json", train)
    _write(out / "femnist" / "test", "all_data_0_niid_0_keep_0_test_8.json", test)


# Public-domain text: speeches from Shakespeare's plays, one user per play and character.
LINES = {
    "HAMLET_HAMLET": (
        "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
        "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles "
        "And by opposing end them. To die: to sleep; No more; and by a sleep to say we end "
        "The heart-ache and the thousand natural shocks That flesh is heir to, 'tis a consummation "
        "Devoutly to be wish'd. To die, to sleep; To sleep: perchance to dream: ay, there's the rub; "
        "For in that sleep of death what dreams may come When we have shuffled off this mortal coil, "
        "Must give us pause."),
    "MACBETH_MACBETH": (
        "To-morrow, and to-morrow, and to-morrow, Creeps in this petty pace from day to day "
        "To the last syllable of recorded time, And all our yesterdays have lighted fools "
        "The way to dusty death. Out, out, brief candle! Life's but a walking shadow, a poor player "
        "That struts and frets his hour upon the stage And then is heard no more: it is a tale "
        "Told by an idiot, full of sound and fury, Signifying nothing."),
    "AS_YOU_LIKE_IT_JAQUES": (
        "All the world's a stage, And all the men and women merely players: They have their exits "
        "and their entrances; And one man in his time plays many parts, His acts being seven ages. "
        "At first the infant, Mewling and puking in the nurse's arms. And then the whining school-boy, "
        "with his satchel And shining morning face, creeping like snail Unwillingly to school."),
    "ROMEO_AND_JULIET_JULIET": (
        "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name; Or, if thou "
        "wilt not, be but sworn my love, And I'll no longer be a Capulet. 'Tis but thy name that is "
        "my enemy; Thou art thyself, though not a Montague. What's Montague? it is nor hand, nor foot, "
        "Nor arm, nor face, nor any other part Belonging to a man. O, be some other name! What's in a "
        "name? that which we call a rose By any other name would smell as sweet."),
    "THE_MERCHANT_OF_VENICE_PORTIA": (
        "The quality of mercy is not strain'd, It droppeth as the gentle rain from heaven Upon the "
        "place beneath: it is twice blest; It blesseth him that gives and him that takes: 'Tis "
        "mightiest in the mightiest: it becomes The throned monarch better than his crown; His sceptre "
        "shows the force of temporal power, The attribute to awe and majesty."),
    "JULIUS_CAESAR_ANTONY": (
        "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
        "The evil that men do lives after them; The good is oft interred with their bones; So let it "
        "be with Caesar. The noble Brutus Hath told you Caesar was ambitious: If it were so, it was a "
        "grievous fault, And grievously hath Caesar answer'd it."),
    "THE_TEMPEST_PROSPERO": (
        "Our revels now are ended. These our actors, As I foretold you, were all spirits and Are "
        "melted into air, into thin air: And, like the baseless fabric of this vision, The "
        "cloud-capp'd towers, the gorgeous palaces, The solemn temples, the great globe itself, Yea, "
        "all which it inherit, shall dissolve And, like this insubstantial pageant faded, Leave not a "
        "rack behind. We are such stuff As dreams are made on, and our little life Is rounded with a sleep."),
    "KING_HENRY_V_KING_HENRY": (
        "Once more unto the breach, dear friends, once more; Or close the wall up with our English "
        "dead. In peace there's nothing so becomes a man As modest stillness and humility: But when "
        "the blast of war blows in our ears, Then imitate the action of the tiger; Stiffen the sinews, "
        "summon up the blood, Disguise fair nature with hard-favour'd rage."),
}


def shakespeare(out: Path = HERE, window: int = 80, seed: int = 0) -> None:
    """The Shakespeare stand-in (see the module docstring)."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for user in sorted(LINES):
        text = LINES[user]
        xs = [text[i:i + window] for i in range(len(text) - window)]
        ys = [text[i + window] for i in range(len(text) - window)]
        is_test = rng.random(len(xs)) < 0.2
        train[user] = {"x": [a for a, t in zip(xs, is_test, strict=True) if not t],
                       "y": [b for b, t in zip(ys, is_test, strict=True) if not t]}
        test[user] = {"x": [a for a, t in zip(xs, is_test, strict=True) if t],
                      "y": [b for b, t in zip(ys, is_test, strict=True) if t]}
    _write(out / "shakespeare" / "train", "all_data_niid_0_keep_0_train_8.json", train)
    _write(out / "shakespeare" / "test", "all_data_niid_0_keep_0_test_8.json", test)


if __name__ == "__main__":
    femnist()
    shakespeare()
    for f in sorted(HERE.rglob("*.json")):
        print(f"{f.relative_to(HERE)}: {f.stat().st_size / 1024:.0f} KiB")
