"""Word-vector files: round trips, the real GloVe file, malformed files, task embedding tables."""
import numpy as np
import pytest

from tl_jax.data import vector_formats as vf
from tl_jax.models import embeddings


def _vectors(n=7, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "Straße", "naïve", "x", "日本", "don't", "42"][:n]
    return vf.WordVectors(words, rng.normal(size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("fmt", sorted(vf.FORMATS))
def test_round_trip_is_exact(tmp_path, fmt):
    vectors = _vectors()
    path = tmp_path / ("v.bin" if fmt == "word2vec_binary" else "v.txt")
    vf.save_vectors(vectors, path, fmt)
    for loaded in (vf.load_vectors(path, fmt), vf.load_vectors(path)):  # explicit and guessed
        assert loaded.words == vectors.words
        np.testing.assert_array_equal(loaded.vectors, vectors.vectors)


def test_guess_format_tells_the_three_apart(tmp_path):
    vectors = _vectors()
    vf.save_word2vec_text(vectors, tmp_path / "a.txt")
    vf.save_glove_text(vectors, tmp_path / "b.txt")
    vf.save_word2vec_binary(vectors, tmp_path / "c.bin")
    assert [vf.guess_format(tmp_path / n) for n in ("a.txt", "b.txt", "c.bin")] == \
        ["word2vec_text", "glove_text", "word2vec_binary"]


@pytest.mark.parametrize("name", ["vectors.w2v", "vectors"])
def test_binary_vectors_under_another_name_are_guessed_and_load(tmp_path, name):
    # gensim's save_word2vec_format(binary=True) writes whatever name it is given; such a file
    # was guessed word2vec text from its header and failed as "not UTF-8" on line 2.
    vectors = _vectors(7, 50)
    vf.save_word2vec_binary(vectors, tmp_path / name)
    assert vf.guess_format(tmp_path / name) == "word2vec_binary"
    loaded = vf.load_vectors(tmp_path / name)
    assert loaded.words == vectors.words
    np.testing.assert_array_equal(loaded.vectors, vectors.vectors)
    # A newline byte among the first floats ends their "line" early: still binary.
    early = vf.WordVectors(["a", "b"], np.frombuffer(b"\x0a\x00\x80\x3f" * 4, "<f4")
                           .reshape(2, 2))
    vf.save_word2vec_binary(early, tmp_path / name)
    assert vf.guess_format(tmp_path / name) == "word2vec_binary"
    # Text stays text, with many-byte words where the sniffed block ends, and so does a file
    # broken as text (its own error names the line, not a binary layout).
    for word in ("x" + "日本語" * 40, "x" + "日本語" * 400):
        text = vf.WordVectors([word] * 3, np.ones((3, 2), np.float32))
        vf.save_word2vec_text(text, tmp_path / "t.txt")
        assert vf.guess_format(tmp_path / "t.txt") == "word2vec_text"
    (tmp_path / "bad.txt").write_text("2 3\nthe 1 2\n")
    assert vf.guess_format(tmp_path / "bad.txt") == "word2vec_text"


def test_binary_without_newlines_between_entries_loads(tmp_path):
    vectors = _vectors(3, 4)
    with open(tmp_path / "v.bin", "wb") as f:  # gensim accepts entries packed back to back
        f.write(b"3 4\n")
        for w, row in zip(vectors.words, vectors.vectors):
            f.write(w.encode() + b" " + row.astype("<f4").tobytes())
    loaded = vf.load_word2vec_binary(tmp_path / "v.bin")
    assert loaded.words == vectors.words
    np.testing.assert_array_equal(loaded.vectors, vectors.vectors)


def test_real_glove_file_loads(data_dir):
    vectors = vf.load_glove_text(data_dir / "glove.6B.50d.top20k.txt")
    assert len(vectors) == 20_000 and vectors.dim == 50
    assert vectors.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(vectors["the"][:3], [0.418, 0.24968, -0.41242], rtol=1e-6)
    assert vectors.most_similar("france", 5)[0][0] in {"belgium", "french", "spain", "britain"}


@pytest.mark.parametrize("content,loader,match", [
    ("a 1 2\nb 3\n", vf.load_glove_text, r"bad.txt:2: expected a word and 2 numbers"),
    ("a 1 2\nb 3 x\n", vf.load_glove_text, r"bad.txt:2: non-numeric"),
    ("a 1 2\n\nb 1 2\n", vf.load_glove_text, r"bad.txt:2: empty line"),
    ("", vf.load_glove_text, r"no vectors"),
    ("3 2\na 1 2\nb 3 4\n", vf.load_word2vec_text, r"header says 3 vectors, file has 2"),
    ("2 x\na 1 2\n", vf.load_word2vec_text, r"bad.txt:1: expected a header"),
    ("2 2\na 1 2\nb 1 2 3\n", vf.load_word2vec_text, r"bad.txt:3"),
    ("a 1 2\nb nan 4\n", vf.load_glove_text, r"bad.txt:2: non-finite .* word 'b'"),
    ("2 2\na 1 2\nb 3 -inf\n", vf.load_word2vec_text, r"bad.txt:3: non-finite"),
])
def test_malformed_text_files_name_file_and_line(tmp_path, content, loader, match):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        loader(path)


def test_non_finite_binary_vector_names_the_entry(tmp_path):
    rows = np.array([[1, 2], [np.nan, 4]], np.float32)
    (tmp_path / "bad.bin").write_bytes(b"2 2\na " + rows[0].tobytes() + b"\nb "
                                       + rows[1].tobytes() + b"\n")
    with pytest.raises(ValueError, match=r"bad.bin: entry 2 .*word 'b'.* non-finite"):
        vf.load_word2vec_binary(tmp_path / "bad.bin")


def test_non_utf8_text_file_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"2 3\nthe 1 2 3\n\xffof 1 2 3\n")
    for loader in (vf.load_word2vec_text, vf.load_vectors):
        with pytest.raises(ValueError, match=r"bad.txt:3: not UTF-8"):
            loader(tmp_path / "bad.txt")


@pytest.mark.parametrize("fmt", ["word2vec_text", "glove_text"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_word(tmp_path, fmt):
    # Windows editors and some exporters start UTF-8 text with a BOM.
    vectors = _vectors(3, 2)
    vf.save_vectors(vectors, tmp_path / "plain.txt", fmt)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.txt").read_bytes())
    assert vf.guess_format(tmp_path / "bom.txt") == fmt
    for guess in (fmt, None):
        loaded = vf.load_vectors(tmp_path / "bom.txt", guess)
        assert loaded.words == vectors.words
        np.testing.assert_array_equal(loaded.vectors, vectors.vectors)


@pytest.mark.parametrize("name", ["v.bin.gz", "v.txt.gz"])
def test_a_compressed_file_is_named_as_compressed(tmp_path, name):
    # GoogleNews-vectors-negative300.bin.gz is the usual word2vec download.
    import gzip

    with gzip.open(tmp_path / name, "wb") as f:
        f.write(b"1 2\na 1 2\n")
    loaders = [vf.load_vectors] + [load for load, _ in vf.FORMATS.values()]
    for load in loaders:
        with pytest.raises(ValueError, match=rf"{name} is gzip-compressed"):
            load(tmp_path / name)


@pytest.mark.parametrize("fmt", sorted(vf.FORMATS))
def test_unicode_whitespace_tokens_load_and_round_trip(tmp_path, fmt):
    # GloVe's vocabularies hold tokens such as a lone no-break space; only " " separates fields.
    (tmp_path / "g.txt").write_text("the 1 2\n\xa0 3 4\na\u2009b 5 6\n", encoding="utf-8")
    vectors = vf.load_glove_text(tmp_path / "g.txt")
    assert vectors.words == ["the", "\xa0", "a\u2009b"]
    path = tmp_path / ("v.bin" if fmt == "word2vec_binary" else "v.txt")
    vf.save_vectors(vectors, path, fmt)
    assert vf.load_vectors(path, fmt).words == vectors.words
    with pytest.raises(ValueError, match="space or newline"):
        vf.WordVectors(["a b"], np.zeros((1, 2)))


def test_truncated_binary_file_is_an_error(tmp_path):
    vf.save_word2vec_binary(_vectors(3, 4), tmp_path / "v.bin")
    data = (tmp_path / "v.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"cut.bin: entry 3 of 3 .* truncated"):
        vf.load_word2vec_binary(tmp_path / "cut.bin")
    (tmp_path / "extra.bin").write_bytes(data + b"junk")
    with pytest.raises(ValueError, match="unexpected bytes"):
        vf.load_word2vec_binary(tmp_path / "extra.bin")


@pytest.mark.parametrize("fmt", sorted(vf.FORMATS))
def test_a_save_that_fails_midway_keeps_the_previous_file(tmp_path, fmt):
    # A GloVe text cut at a line end even loads, silently short; and the old file is gone.
    good = _vectors()
    path = tmp_path / ("v.bin" if fmt == "word2vec_binary" else "v.txt")
    vf.save_vectors(good, path, fmt)
    before = path.read_bytes()
    broken = _vectors()
    broken.words[4] = None  # fails after four rows are written
    with pytest.raises((TypeError, AttributeError)):
        vf.save_vectors(broken, path, fmt)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nowhere.v.out: its folder "
                                                 r".*nowhere does not exist"):
        vf.save_vectors(good, tmp_path / "nowhere" / "v.out", fmt)


def test_most_similar_never_returns_the_word_itself_and_rejects_negative_topn():
    vectors = _vectors(3, 4)
    result = vectors.most_similar("the", topn=10)
    assert [w for w, _ in result] != [] and "the" not in [w for w, _ in result]
    assert len(result) == 2 and all(np.isfinite(s) for _, s in result)
    with pytest.raises(ValueError, match="topn=-1"):
        vectors.most_similar("the", topn=-1)
    # The vectors' words are lowercase: a capitalised word names the one that is there.
    with pytest.raises(KeyError, match=r"'The' is not in the vocabulary; 'the' is \(the "
                                       r"vectors' words are lowercase\)"):
        vectors.most_similar("The")
    with pytest.raises(KeyError, match=r"'zebra' is not in the vocabulary\W*$"):
        vectors.most_similar("zebra")


@pytest.mark.parametrize("content,match", [(b"0 3\n", r"e.bin: no vectors in file"),
                                           (b"2 0\na \nb \n", r"e.bin:1: dimension 0")])
def test_binary_file_without_vectors_is_an_error_like_a_text_one(tmp_path, content, match):
    (tmp_path / "e.bin").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        vf.load_word2vec_binary(tmp_path / "e.bin")


def test_embedding_matrix_for_a_task_vocabulary():
    vectors = vf.WordVectors(["the", "cat", "sat"], np.arange(12, dtype=np.float32).reshape(3, 4))
    matrix, n_oov = embeddings.embedding_matrix_for_vocab(
        vectors, ["[PAD]", "The", "sat", "dog", "cat"])
    assert matrix.shape == (5, 4) and n_oov == 2
    np.testing.assert_array_equal(matrix[1], vectors["the"])  # lowercase fallback
    np.testing.assert_array_equal(matrix[2], vectors["sat"])
    np.testing.assert_array_equal(matrix[4], vectors["cat"])
    # OOV rows are random but on the scale of the pretrained ones, and distinct.
    assert not np.allclose(matrix[0], matrix[3])
    _, strict_oov = embeddings.embedding_matrix_for_vocab(
        vectors, ["The"], lowercase_fallback=False)
    assert strict_oov == 1


def test_embedding_matrix_refuses_a_string_vocab_and_vectors_not_loaded(tmp_path):
    """`embedding_matrix_for_vocab(vectors, "the")` built a table of 3 rows, one per character,
    without a word; a path in place of the vectors said "'str' object has no attribute
    'vectors'"."""
    vectors = vf.WordVectors(["the", "cat"], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"vocab='the' is a string; give the task's tokens as a "
                                         "list"):
        embeddings.embedding_matrix_for_vocab(vectors, "the")
    path = tmp_path / "v.txt"
    vf.save_glove_text(vectors, path)
    for given in (str(path), path):
        with pytest.raises(TypeError, match=r"vectors is a \w+, not WordVectors \(load the file "
                                            r"first: vector_formats.load_vectors\(path\)\)"):
            embeddings.embedding_matrix_for_vocab(given, ["the"])


@pytest.mark.parametrize("encoder", ["bag", "bilstm"])
def test_static_embedding_classifier_uses_the_pretrained_table(encoder):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    matrix = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    ids = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = ids > 0
    for freeze in (True, False):
        model = embeddings.StaticEmbeddingClassifier(10, 4, 3, encoder=encoder, hidden=8,
                                                     freeze_embeddings=freeze)
        params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, mask)["params"])
        params = embeddings.load_embedding_matrix(params, matrix)
        np.testing.assert_array_equal(params["embed"]["embedding"], matrix)

        def loss(p):
            logits, _ = model.apply({"params": p}, ids, mask)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

        grads = jax.jit(jax.grad(loss))(params)
        emb_grad = np.abs(np.asarray(grads["embed"]["embedding"]))
        assert (emb_grad.sum() == 0) == freeze
        assert np.abs(np.asarray(grads["classifier"]["kernel"])).sum() > 0
        # Padding never reaches the output: changing a padded id changes nothing.
        apply = jax.jit(lambda p, i: model.apply({"params": p}, i, mask)[0])
        logits, logits2 = apply(params, ids), apply(params, ids.at[1, 3].set(9))
        np.testing.assert_allclose(logits, logits2, atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        embeddings.load_embedding_matrix(params, matrix[:5])


def test_static_embedding_classifier_table_is_sharded_like_the_other_models(tmp_path):
    """Its table was a plain nn.Embed's, without logical axes: under fsdp it stayed whole on
    every device. It is now ("vocab", "embed") like BERT's and GPT's, with nn.Embed's name and
    initial values, and pretrained vectors still load into it, boxed or not."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from tl_jax import parallel

    vocab_size, dim = 64, 16
    ids = jnp.asarray(np.random.default_rng(0).integers(1, vocab_size, (8, 6)))
    ids = ids.at[:, 4:].set(0)
    mask = ids > 0
    model = embeddings.StaticEmbeddingClassifier(vocab_size, dim, 3, encoder="bag", dropout=0.0)
    boxed = model.init(jax.random.PRNGKey(3), ids, mask)["params"]
    assert boxed["embed"]["embedding"].names == ("vocab", "embed")

    class PlainEmbed(nn.Module):  # the table as it was: nn.Embed at the same path
        @nn.compact
        def __call__(self, x):
            return nn.Embed(vocab_size, dim, name="embed")(x)

    plain = PlainEmbed().init(jax.random.PRNGKey(3), ids)["params"]["embed"]["embedding"]
    np.testing.assert_array_equal(nn.unbox(boxed)["embed"]["embedding"], plain)

    # GloVe and word2vec vectors from their files, laid out for the vocabulary, load into the
    # boxed params (the box, and so the sharding, kept) and into unboxed ones alike.
    vectors = vf.WordVectors([f"w{i}" for i in range(40)],
                             np.random.default_rng(1).normal(size=(40, dim)).astype(np.float32))
    words = ["[PAD]"] + [f"w{i}" for i in range(vocab_size - 1)]
    for fmt, name in (("glove_text", "v.txt"), ("word2vec_binary", "v.bin")):
        vf.save_vectors(vectors, tmp_path / name, fmt)
        matrix, n_oov = embeddings.embedding_matrix_for_vocab(vf.load_vectors(tmp_path / name),
                                                              words)
        assert n_oov == vocab_size - 40
        loaded = embeddings.load_embedding_matrix(boxed, matrix)
        assert loaded["embed"]["embedding"].names == ("vocab", "embed")
        unboxed = embeddings.load_embedding_matrix(nn.unbox(boxed), matrix)
        for params in (nn.unbox(loaded), unboxed):
            np.testing.assert_array_equal(params["embed"]["embedding"], matrix)
            _, inter = model.apply({"params": params}, ids, mask)
            np.testing.assert_array_equal(inter["embeddings"], matrix[np.asarray(ids)])
    ref, _ = model.apply({"params": nn.unbox(loaded)}, ids, mask)

    rules = parallel.axis_rules(parallel.default_config())
    # fsdp 8 splits the columns; data 2 x fsdp 2 x tensor 2 the rows over tensor as well.
    for sizes, shard in (((1, 8, 1), (64, 2)), ((2, 2, 2), (32, 8))):
        cfg = parallel.default_config()
        cfg.data, cfg.fsdp, cfg.tensor = sizes
        mesh = parallel.make_mesh(cfg)
        shardings = parallel.logical_to_shardings(loaded, mesh, rules)
        params = jax.device_put(nn.unbox(loaded), shardings)
        table = params["embed"]["embedding"]
        assert "fsdp" in str(table.sharding.spec), (sizes, table.sharding.spec)
        assert table.sharding.shard_shape(table.shape) == shard, sizes
        with parallel.mesh_context(mesh, rules):
            logits = jax.jit(lambda p: model.apply({"params": p}, ids, mask)[0])(params)
        np.testing.assert_allclose(logits, ref, rtol=1e-6, atol=1e-6)


def test_repeated_words_keep_the_first_vector_and_are_noted(tmp_path, capsys):
    # gensim keeps the first and warns; the loader kept the first without a word.
    path = tmp_path / "v.txt"
    path.write_text("cat 1 0\ndog 0 1\ncat 5 5\n")
    vectors = vf.load_vectors(str(path), "glove_text")
    assert vectors["cat"].tolist() == [1.0, 0.0]
    assert (f"[vectors] Note: {path} holds 1 repeated word(s) (e.g. 'cat', entries 1 and 3); "
            "the first vector of each is used") in capsys.readouterr().out
    path.write_text("cat 1 0\ndog 0 1\n")
    vf.load_vectors(str(path), "glove_text")
    assert "repeated" not in capsys.readouterr().out


def test_word2vec_text_read_as_glove_text_names_the_header(tmp_path):
    # load_vectors(path, "glove_text") on a word2vec file took `V D` for a word and a 1-d
    # vector, and the error spoke of line 2's field count only.
    path = tmp_path / "v.txt"
    vf.save_word2vec_text(_vectors(3, 4), path)
    with pytest.raises(ValueError, match=r"v.txt:2: expected a word and 1 numbers, got 5 "
                       r"fields; line 1 \(3 4\) looks like word2vec's 'vocab_size dim' "
                       r"header: read the file as word2vec_text"):
        vf.load_vectors(path, "glove_text")
    # A GloVe file whose second line is broken keeps the plain error.
    path.write_text("the 1 2\nof 1\n")
    with pytest.raises(ValueError, match=r"v.txt:2: expected a word and 2 numbers, got 2 "
                       r"fields$"):
        vf.load_vectors(path, "glove_text")


def test_a_folder_given_to_load_vectors_names_the_vectors_files_in_it(tmp_path):
    """A `tl_jax static` workdir given for its vectors said only "[Errno 21] Is a directory";
    a format misspelt for `vectors_path` gave a path no run writes."""
    from tl_jax import static_train

    vf.save_vectors(_vectors(), static_train.vectors_path(str(tmp_path), "glove_text"),
                    "glove_text")
    (tmp_path / "vocab.txt").write_text("the\n")
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a vectors file; the vectors "
                                                r"files in it: vectors.glove_text.txt$"):
        vf.load_vectors(tmp_path)
    with pytest.raises(ValueError, match=r"Unknown vector format 'glove'; known: \['glove_text'"):
        static_train.vectors_path(str(tmp_path), "glove")
