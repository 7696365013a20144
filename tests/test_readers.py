"""Each reader on a small file of its own format, with exact parsed values; the real data sets
through the cache; and the leave-one-out split on hand-made input."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recforge.config import DataConfig
from recforge.data import cache, implicit, interaction_file, movielens, ncf_files
from recforge.data.implicit import RawInteractions, leave_one_out

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA.joinpath(*parts)


def as_list(values) -> list:
    """Raw ids as plain Python values, whether numpy or Arrow."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return np.asarray(values).tolist()


def titles_by_item(data) -> dict:
    return dict(zip(as_list(data.item_ids), [str(t) for t in data.item_titles]))


def held_out_by_user(data) -> dict:
    """{raw user id: raw id of the held-out item}."""
    return dict(zip(as_list(data.user_ids), as_list(np.asarray(data.item_ids)[data.test_items])))


def train_by_user(data) -> dict:
    """{raw user id: sorted raw ids of the training items}."""
    out = defaultdict(list)
    for u, i in zip(data.train_users, data.train_items):
        out[as_list(data.user_ids)[u]].append(as_list(data.item_ids)[i])
    return {u: sorted(items) for u, items in out.items()}


# --------------------------------------------------------------------------- MovieLens layouts


def test_ml_100k_u_data_and_latin1_titles(tmp_path):
    (tmp_path / "u.data").write_text(
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n22\t242\t5\t878887200\n"
    )
    (tmp_path / "u.item").write_bytes(
        "242|Café (1999)|01-Jan-1999||http://x/Caf%E9|0|1|0\n"
        "302|L.A. Confidential (1997)|01-Jan-1997||http://x/LA|0|0|1\n"
        "999|Never Rated (1990)|01-Jan-1990||http://x/n|1|0|0\n".encode("latin-1")
    )
    raw = movielens.read("ml-100k", DataConfig(dataset="ml-100k", data_dir=str(tmp_path)))
    assert raw.users.tolist() == [196, 186, 196, 22]
    assert raw.items.tolist() == [242, 302, 377, 242]
    assert raw.ratings.tolist() == [3.0, 3.0, 1.0, 5.0]
    assert raw.timestamps.tolist() == [881250949, 891717742, 878887116, 878887200]
    assert as_list(raw.item_titles["ids"]) == [242, 302, 999]
    assert list(raw.item_titles["titles"]) == ["Café (1999)", "L.A. Confidential (1997)", "Never Rated (1990)"]

    data = leave_one_out(raw)
    assert as_list(data.item_ids) == [242, 302, 377]
    # 377 is rated but has no row in u.item: empty title, and the others stay aligned.
    assert [str(t) for t in data.item_titles] == ["Café (1999)", "L.A. Confidential (1997)", ""]
    assert held_out_by_user(data) == {22: 242, 186: 302, 196: 242}
    assert train_by_user(data) == {196: [377]}


@pytest.mark.parametrize("point_at_parent", [False, True], ids=["folder", "parent"])
def test_ml_1m_ratings_dat_and_movies_dat(tmp_path, point_at_parent):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n6040::1::2::956703977\n"
    )
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "661::Star Wars: Episode IV (1977)::Action|Sci-Fi\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2::Amélie: Le Fabuleux Destin (2001)::Comedy|Romance\n".encode("latin-1")
    )
    cfg = DataConfig(dataset="ml-1m", data_dir=str(tmp_path if point_at_parent else folder))
    assert movielens.dataset_dir("ml-1m", cfg) == folder
    raw = movielens.read("ml-1m", cfg)
    assert raw.users.tolist() == [1, 1, 2, 6040]
    assert raw.items.tolist() == [1193, 661, 1193, 1]
    assert raw.ratings.tolist() == [5.0, 3.0, 4.0, 2.0]
    assert raw.timestamps.tolist() == [978300760, 978302109, 978298413, 956703977]
    titles = dict(zip(as_list(raw.item_titles["ids"]), list(raw.item_titles["titles"])))
    assert titles == {
        1: "Toy Story (1995)",
        661: "Star Wars: Episode IV (1977)",
        1193: "One Flew Over the Cuckoo's Nest (1975)",
        2: "Amélie: Le Fabuleux Destin (2001)",
    }
    data = leave_one_out(raw)
    assert titles_by_item(data) == {
        1: "Toy Story (1995)",
        661: "Star Wars: Episode IV (1977)",
        1193: "One Flew Over the Cuckoo's Nest (1975)",
    }
    assert held_out_by_user(data) == {1: 661, 2: 1193, 6040: 1}


@pytest.mark.parametrize("name", ["ml-20m", "ml-25m", "ml-latest", "ml-latest-small"])
@pytest.mark.parametrize("point_at_parent", [False, True], ids=["folder", "parent"])
def test_ratings_csv_and_movies_csv(tmp_path, name, point_at_parent):
    folder = tmp_path / movielens.LAYOUTS[name].folder
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,4.5,964981247\n5,1,0.5,847434962\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure\n'
    )
    raw = movielens.read(name, DataConfig(dataset=name, data_dir=str(tmp_path if point_at_parent else folder)))
    assert raw.users.tolist() == [1, 1, 5]
    assert raw.items.tolist() == [1, 11, 1]
    assert raw.ratings.tolist() == [4.0, 4.5, 0.5]
    assert raw.timestamps.tolist() == [964982703, 964981247, 847434962]
    titles = dict(zip(as_list(raw.item_titles["ids"]), list(raw.item_titles["titles"])))
    assert titles == {
        1: "Toy Story (1995)",
        11: "American President, The (1995)",
        29: "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
    }
    data = leave_one_out(raw)
    assert titles_by_item(data) == {1: "Toy Story (1995)", 11: "American President, The (1995)"}
    assert held_out_by_user(data) == {1: 1, 5: 1}
    assert train_by_user(data) == {1: [11]}


def test_movielens_without_title_file(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n")
    raw = movielens.read("ml-100k", DataConfig(dataset="ml-100k", data_dir=str(tmp_path)))
    assert raw.item_titles is None
    assert leave_one_out(raw).item_titles is None


# --------------------------------------------------------------------------- generic csv / tsv / parquet


def csv_cfg(tmp_path, data_file, **kw) -> DataConfig:
    return DataConfig(dataset="csv", data_dir=str(tmp_path), data_file=data_file, **kw)


def test_csv_string_ids_and_custom_columns(tmp_path):
    (tmp_path / "orders.csv").write_text(
        "when,customer,note,sku,stars\n"
        "30,alice,x,SKU-b,4.5\n"
        "10,alice,y,SKU-a,2\n"
        "20,bob,,SKU-a,5\n"
        "40,alice,z,SKU-c,1\n"
        "15,bob,w,SKU-c,3.5\n"
    )
    cfg = csv_cfg(
        tmp_path,
        "orders.csv",
        user_column="customer",
        item_column="sku",
        rating_column="stars",
        timestamp_column="when",
    )
    raw = interaction_file.read(cfg)
    assert as_list(raw.users) == ["alice", "alice", "bob", "alice", "bob"]
    assert as_list(raw.items) == ["SKU-b", "SKU-a", "SKU-a", "SKU-c", "SKU-c"]
    assert raw.ratings.tolist() == [4.5, 2.0, 5.0, 1.0, 3.5]
    assert raw.timestamps.tolist() == [30, 10, 20, 40, 15]

    data = leave_one_out(raw, min_rating=2.0)  # drops alice's SKU-c (1 star)
    assert as_list(data.user_ids) == ["alice", "bob"]
    assert as_list(data.item_ids) == ["SKU-a", "SKU-b", "SKU-c"]
    assert held_out_by_user(data) == {"alice": "SKU-b", "bob": "SKU-a"}
    assert train_by_user(data) == {"alice": ["SKU-a"], "bob": ["SKU-c"]}


def test_data_dir_with_a_single_file_needs_no_data_file(tmp_path):
    (tmp_path / "only.csv").write_text("user_id,item_id,rating,timestamp\n3,9,1,100\n")
    raw = interaction_file.read(DataConfig(dataset="csv", data_dir=str(tmp_path)))
    assert (raw.users.tolist(), raw.items.tolist(), raw.ratings.tolist(), raw.timestamps.tolist()) == (
        [3],
        [9],
        [1.0],
        [100],
    )


def test_tsv(tmp_path):
    (tmp_path / "events.tsv").write_text("u\ti\tr\tt\n7\t70\t1.5\t100\n8\t80\t2\t50\n7\t71\t3\t90\n")
    raw = interaction_file.read(
        csv_cfg(tmp_path, "events.tsv", user_column="u", item_column="i", rating_column="r", timestamp_column="t")
    )
    assert raw.users.tolist() == [7, 8, 7]
    assert raw.items.tolist() == [70, 80, 71]
    assert raw.ratings.tolist() == [1.5, 2.0, 3.0]
    assert raw.timestamps.tolist() == [100, 50, 90]
    assert held_out_by_user(leave_one_out(raw)) == {7: 70, 8: 80}


def test_custom_separator(tmp_path):
    (tmp_path / "events.txt").write_text("u;i;r;t\n1;2;3;4\n5;6;7;8\n")
    raw = interaction_file.read(
        csv_cfg(
            tmp_path,
            "events.txt",
            user_column="u",
            item_column="i",
            rating_column="r",
            timestamp_column="t",
            separator=";",
        )
    )
    assert (raw.users.tolist(), raw.items.tolist(), raw.ratings.tolist(), raw.timestamps.tolist()) == (
        [1, 5],
        [2, 6],
        [3.0, 7.0],
        [4, 8],
    )


def test_csv_with_dates_as_timestamps(tmp_path):
    (tmp_path / "d.csv").write_text("u,i,day\n1,10,2021-03-05\n1,11,2021-03-04\n1,12,2020-12-31\n")
    raw = interaction_file.read(
        csv_cfg(tmp_path, "d.csv", user_column="u", item_column="i", rating_column=None, timestamp_column="day")
    )
    assert raw.ratings is None
    assert raw.timestamps.tolist() == [18691, 18690, 18627]  # days since 1970-01-01
    assert held_out_by_user(leave_one_out(raw)) == {1: 10}


def test_parquet(tmp_path):
    table = pa.table(
        {
            "customer": pa.array(["c2", "c1", "c1", "c2", "c1"]),
            "sku": pa.array(["s9", "s1", "s3", "s1", "s2"]),
            "stars": pa.array([5.0, 4.0, 1.0, 3.0, 2.0], pa.float64()),
            # Parquet stores timestamps in ms (or finer): the reader gives int64 in the file's unit.
            "when": pa.array([1_600_000_300, 1_600_000_000, 1_600_000_200, 1_600_000_100, 1_600_000_200], pa.int64())
            .cast(pa.timestamp("s"))
            .cast(pa.timestamp("ms")),
            "extra": pa.array([1, 2, 3, 4, 5]),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    raw = interaction_file.read(
        csv_cfg(
            tmp_path,
            "events.parquet",
            user_column="customer",
            item_column="sku",
            rating_column="stars",
            timestamp_column="when",
        )
    )
    assert as_list(raw.users) == ["c2", "c1", "c1", "c2", "c1"]
    assert as_list(raw.items) == ["s9", "s1", "s3", "s1", "s2"]
    assert raw.ratings.tolist() == [5.0, 4.0, 1.0, 3.0, 2.0]
    assert raw.timestamps.tolist() == [
        1_600_000_300_000,
        1_600_000_000_000,
        1_600_000_200_000,
        1_600_000_100_000,
        1_600_000_200_000,
    ]
    data = leave_one_out(raw)
    # c1: s3 and s2 tie at the latest time; the larger item id (s3) is held out.
    assert held_out_by_user(data) == {"c1": "s3", "c2": "s9"}
    assert train_by_user(data) == {"c1": ["s1", "s2"], "c2": ["s1"]}


def test_csv_and_parquet_without_rating_or_timestamp_use_file_order(tmp_path):
    rows = [("u1", "b"), ("u1", "c"), ("u2", "c"), ("u1", "a"), ("u2", "a"), ("u2", "b")]
    (tmp_path / "plain.csv").write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    pq.write_table(pa.table({"user": [u for u, _ in rows], "item": [i for _, i in rows]}), tmp_path / "plain.parquet")
    for name in ("plain.csv", "plain.parquet"):
        cfg = csv_cfg(tmp_path, name, user_column="user", item_column="item", rating_column=None, timestamp_column=None)
        raw = interaction_file.read(cfg)
        assert raw.ratings is None and raw.timestamps is None
        assert as_list(raw.users) == [u for u, _ in rows]
        assert as_list(raw.items) == [i for _, i in rows]
        data = leave_one_out(raw)
        # The last row of each user in the file is the held-out one, whatever its id.
        assert held_out_by_user(data) == {"u1": "a", "u2": "b"}, name
        assert train_by_user(data) == {"u1": ["b", "c"], "u2": ["a", "c"]}, name


# --------------------------------------------------------------------------- NCF triple


def write_ncf_triple(folder: Path, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.train.rating").write_text(
        "2\t5\t4\t100\n0\t3\t5\t101\n1\t0\t3\t102\n0\t1\t4\t103\n2\t1\t1\t104\n0\t2\t2\t105\n"
    )
    (folder / f"{name}.test.rating").write_text("0\t4\t5\t200\n1\t6\t4\t201\n2\t0\t3\t202\n")
    (folder / f"{name}.test.negative").write_text("(0,4)\t6\t7\t0\n(1,6)\t2\t7\t3\n(2,0)\t6\t2\t7\n")
    return folder / name


def test_ncf_triple(tmp_path):
    write_ncf_triple(tmp_path / "ncf")
    data = ncf_files.read(DataConfig(dataset="ncf", data_dir=str(tmp_path / "ncf")))
    assert data.train_users.tolist() == [0, 0, 0, 1, 2, 2]
    assert data.train_items.tolist() == [1, 2, 3, 0, 1, 5]
    assert data.test_items.tolist() == [4, 6, 0]
    assert data.eval_negatives.tolist() == [[6, 7, 0], [2, 7, 3], [6, 2, 7]]
    assert data.user_ids.tolist() == [0, 1, 2]
    assert data.item_ids.tolist() == list(range(8))  # the largest item (7) is only a negative
    assert data.user_offsets.tolist() == [0, 3, 4, 6]


def test_ncf_triple_named_with_data_file(tmp_path):
    write_ncf_triple(tmp_path, "a")
    write_ncf_triple(tmp_path, "b")
    data = ncf_files.read(DataConfig(dataset="ncf", data_dir=str(tmp_path), data_file="b"))
    assert data.test_items.tolist() == [4, 6, 0]


def test_ncf_read_test_on_real_ml_1m():
    folder = shared("ncf-ml-1m")
    items, negatives = ncf_files.read_test(folder / "ml-1m")
    expected_items, expected_negatives = [], []
    with open(folder / "ml-1m.test.rating") as f:
        for user, line in enumerate(f):
            fields = line.split("\t")
            assert int(fields[0]) == user
            expected_items.append(int(fields[1]))
    with open(folder / "ml-1m.test.negative") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            expected_negatives.append([int(v) for v in fields[1:]])
    assert items.shape == (6040,) and negatives.shape == (6040, 99)
    assert items[0] == 25
    assert negatives[0, :3].tolist() == [1064, 174, 2791]
    assert items.tolist() == expected_items
    assert np.array_equal(negatives, np.array(expected_negatives))
    # The held-out item is in its user's negatives exactly where the file has it so (the NCF
    # authors' sampling let it in for 156 users, e.g. line 13: user 12, item 844).
    clash = [u for u, (i, negs) in enumerate(zip(expected_items, expected_negatives)) if i in negs]
    assert np.flatnonzero((negatives == items[:, None]).any(axis=1)).tolist() == clash
    assert len(clash) == 156 and clash[0] == 12 and items[12] == 844


# --------------------------------------------------------------------------- real data through the cache


def independent_split(rows: list[tuple[int, int, int]], min_user_interactions: int):
    """users, items, train count and {user: held-out item} computed with plain Python."""
    latest: dict[tuple[int, int], int] = {}
    for u, i, t in rows:
        latest[(u, i)] = max(t, latest.get((u, i), t))
    per_user: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (u, i), t in latest.items():
        per_user[u].append((t, i))
    kept = {u: v for u, v in per_user.items() if len(v) >= min_user_interactions}
    items = {i for v in kept.values() for _, i in v}
    held_out = {u: max(v)[1] for u, v in kept.items()}  # latest time, then the larger item
    interactions = sum(len(v) for v in kept.values())
    return sorted(kept), sorted(items), interactions, held_out


def check_prepared(data, rows, min_user_interactions):
    users, items, interactions, held_out = independent_split(rows, min_user_interactions)
    assert data.num_users == len(users)
    assert data.num_items == len(items)
    assert len(data.train_items) + data.num_users == interactions
    assert data.user_ids.tolist() == users
    assert data.item_ids.tolist() == items
    assert held_out_by_user(data) == held_out
    keys = data.train_users.astype(np.int64) * data.num_items + data.train_items
    assert np.all(np.diff(keys) > 0)  # sorted by (user, item), no duplicates
    assert not np.isin(np.arange(data.num_users) * data.num_items + data.test_items, keys).any()
    return users, items, interactions


def test_real_ml_100k_through_cache(tmp_path):
    folder = shared("ml-100k")
    rows = []
    with open(folder / "u.data") as f:
        for line in f:
            u, i, _, t = line.split("\t")
            rows.append((int(u), int(i), int(t)))
    cfg = DataConfig(
        dataset="ml-100k", data_dir=str(folder), cache_dir=str(tmp_path / "cache"), min_user_interactions=20
    )
    logged = []
    data, path = cache.prepare(cfg, log=logged.append)
    users, items, interactions = check_prepared(data, rows, 20)
    assert (len(users), len(items), interactions) == (943, 1682, 100_000)  # every user keeps >= 20
    assert (np.bincount(data.train_users, minlength=943) + 1).min() == 20
    assert titles_by_item(data)[1] == "Toy Story (1995)"
    assert len(logged) == 1 and path.parent == tmp_path / "cache" and path.name.startswith("ml-100k-")

    meta = path / "meta.json"
    old = 1_000_000_000 * 10**9
    os.utime(meta, ns=(old, old))
    again, path2 = cache.prepare(cfg, log=logged.append)
    assert path2 == path
    assert meta.stat().st_mtime_ns == old  # reused, not rewritten
    assert len(logged) == 1
    assert np.array_equal(again.train_items, data.train_items) and np.array_equal(again.test_items, data.test_items)

    (path / "marker").write_text("stale")
    rebuilt, path3 = cache.prepare(DataConfig(**{**cfg.__dict__, "clean": True}), log=logged.append)
    assert path3 == path
    assert meta.stat().st_mtime_ns != old
    assert not (path / "marker").exists()
    assert len(logged) == 2
    assert np.array_equal(rebuilt.test_items, data.test_items)


def test_real_ml_latest_small_through_cache(tmp_path):
    folder = shared("ml-latest-small")
    rows = []
    with open(folder / "ratings.csv") as f:
        next(f)
        for line in f:
            u, i, _, t = line.rstrip("\n").split(",")
            rows.append((int(u), int(i), int(t)))
    cfg = DataConfig(dataset="ml-latest-small", data_dir=str(folder), cache_dir=str(tmp_path), min_user_interactions=20)
    data, path = cache.prepare(cfg, log=lambda _: None)
    users, items, interactions = check_prepared(data, rows, 20)
    assert (len(users), len(items), interactions) == (610, 9724, 100_836)
    titles = titles_by_item(data)
    assert titles[11] == "American President, The (1995)"
    assert titles[29] == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"


def test_cache_key_follows_options_and_source_files(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n1\t2\t5\t2\n2\t1\t5\t3\n")
    cfg = DataConfig(
        dataset="ml-100k", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), min_user_interactions=1
    )
    first, path = cache.prepare(cfg, log=lambda _: None)
    assert first.num_users == 2
    other, other_path = cache.prepare(DataConfig(**{**cfg.__dict__, "min_user_interactions": 2}), log=lambda _: None)
    assert other_path != path and other.num_users == 1
    # Rewritten with the old size and modification time (cp -p, rsync -t): a new entry all the same.
    source, stat = tmp_path / "u.data", (tmp_path / "u.data").stat()
    source.write_text("1\t1\t5\t1\n3\t2\t5\t2\n2\t1\t5\t3\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    same_stat, same_stat_path = cache.prepare(cfg, log=lambda _: None)
    assert same_stat_path != path and same_stat.num_users == 3
    # Moved elsewhere with the same bytes: the same entry.
    moved = tmp_path / "moved"
    moved.mkdir()
    source.rename(moved / "u.data")
    assert (
        cache.prepare(DataConfig(**{**cfg.__dict__, "data_dir": str(moved)}), log=lambda _: None)[1] == same_stat_path
    )


# --------------------------------------------------------------------------- leave-one-out


def raw_from_rows(rows, with_time=True, with_rating=True) -> RawInteractions:
    cols = list(zip(*rows))
    return RawInteractions(
        users=np.array(cols[0]),
        items=np.array(cols[1]),
        ratings=np.array(cols[2], dtype=np.float32) if with_rating else None,
        timestamps=np.array(cols[3]) if with_time else None,
    )


LOO_ROWS = [
    # user, item, rating, time
    (7, 100, 5, 5),
    (7, 300, 4, 9),  # ties with 200 at t=9: the larger item id is held out
    (7, 200, 4, 9),
    (3, 200, 5, 50),
    (3, 100, 5, 10),
    (3, 300, 5, 55),
    (3, 100, 5, 60),  # duplicate of (3, 100): the later one counts, so 100 is held out
    (5, 150, 5, 1),  # a single interaction: user 5 and item 150 are dropped
    (9, 100, 5, 1),
    (9, 200, 1, 99),  # below min_rating: not the held-out one
    (9, 300, 4, 2),
    (9, 500, 2, 3),  # below min_rating: item 500 disappears
    (11, 100, 5, 1),
    (11, 100, 5, 2),  # two rows but one distinct item: under the threshold
    (13, 100, 5, 1),
    (13, 400, 2, 2),  # one positive left after min_rating: dropped
]


def test_leave_one_out_hand_made():
    data = leave_one_out(raw_from_rows(LOO_ROWS), min_rating=3, min_user_interactions=2)
    assert data.user_ids.tolist() == [3, 7, 9]
    assert data.item_ids.tolist() == [100, 200, 300]  # 150, 400, 500 gone; ids re-compacted
    assert data.test_items.tolist() == [0, 2, 2]  # 3 -> 100, 7 -> 300, 9 -> 300
    assert data.train_users.tolist() == [0, 0, 1, 1, 2]
    assert data.train_items.tolist() == [1, 2, 0, 1, 0]
    assert data.user_offsets.tolist() == [0, 2, 4, 5]
    assert (
        data.train_users.dtype == np.int32 and data.train_items.dtype == np.int32 and data.test_items.dtype == np.int32
    )


def test_leave_one_out_without_filters():
    data = leave_one_out(raw_from_rows(LOO_ROWS), min_user_interactions=1)
    assert data.user_ids.tolist() == [3, 5, 7, 9, 11, 13]
    assert data.item_ids.tolist() == [100, 150, 200, 300, 400, 500]
    assert held_out_by_user(data) == {3: 100, 5: 150, 7: 300, 9: 200, 11: 100, 13: 400}
    assert train_by_user(data) == {3: [200, 300], 7: [100, 200], 9: [100, 300, 500], 13: [100]}
    # The second-latest interaction, one of the training rows; none where training would be left empty.
    valid = np.asarray(data.item_ids)[data.valid_items]
    assert dict(zip(as_list(data.user_ids), np.where(data.valid_items >= 0, valid, -1).tolist())) == {
        3: 300,
        5: -1,
        7: 200,
        9: 500,
        11: -1,
        13: -1,
    }
    held = data.without_validation()
    assert train_by_user(held) == {3: [200], 7: [100], 9: [100, 300], 13: [100]}
    assert held.test_items.tolist() == data.test_items.tolist()


def test_leave_one_out_tie_uses_item_order_not_file_order():
    rows = [(1, 9, 1, 5), (1, 30, 1, 5), (1, 10, 1, 5), (2, 30, 1, 7), (2, 9, 1, 7)]
    assert held_out_by_user(leave_one_out(raw_from_rows(rows))) == {1: 30, 2: 30}
    # The validation item breaks ties the same way.
    rows = [(1, 9, 1, 5), (1, 30, 1, 5), (1, 10, 1, 5), (1, 40, 1, 6)]
    data = leave_one_out(raw_from_rows(rows))
    assert data.item_ids[data.test_items].tolist() == [40] and data.item_ids[data.valid_items].tolist() == [30]


def test_leave_one_out_without_timestamps_file_order_and_duplicates():
    rows = [(1, 5, 5, 0), (1, 3, 5, 0), (1, 9, 5, 0), (1, 5, 5, 0), (2, 9, 5, 0), (2, 3, 5, 0)]
    data = leave_one_out(raw_from_rows(rows, with_time=False), min_user_interactions=2)
    # user 1's last row is a repeat of item 5: the repeat counts, so 5 (not 9) is held out.
    assert held_out_by_user(data) == {1: 5, 2: 3}
    assert train_by_user(data) == {1: [3, 9], 2: [9]}


def test_leave_one_out_min_rating_without_timestamps_keeps_file_positions():
    rows = [(1, 4, 5, 0), (1, 2, 5, 0), (1, 3, 1, 0), (2, 2, 4, 0), (2, 4, 5, 0)]
    data = leave_one_out(raw_from_rows(rows, with_time=False), min_rating=4)
    assert held_out_by_user(data) == {1: 2, 2: 4}
    assert data.item_ids.tolist() == [2, 4]


def test_leave_one_out_errors():
    from recforge.core.errors import RecforgeError

    with pytest.raises(RecforgeError, match="min_rating"):
        leave_one_out(raw_from_rows(LOO_ROWS, with_rating=False), min_rating=3)
    with pytest.raises(RecforgeError, match="no interactions left"):
        leave_one_out(raw_from_rows(LOO_ROWS), min_rating=6)
    with pytest.raises(RecforgeError, match="at least 5"):
        leave_one_out(raw_from_rows(LOO_ROWS), min_user_interactions=5)


def test_csv_zero_padded_string_ids_stay_distinct(tmp_path):
    (tmp_path / "p.csv").write_text("user,item\nA,007\nA,7\nB,007\n")
    raw = interaction_file.read(
        csv_cfg(tmp_path, "p.csv", user_column="user", item_column="item", rating_column=None, timestamp_column=None)
    )
    assert sorted(set(map(str, as_list(raw.items)))) == ["007", "7"]


def test_factorize_is_sorted_for_numbers_and_strings():
    codes, uniques = implicit.factorize(np.array([30, 10, 20, 10]))
    assert codes.tolist() == [2, 0, 1, 0] and uniques.tolist() == [10, 20, 30]
    codes, uniques = implicit.factorize(np.array([10**12, 5, 10**12]))  # sparse range: the np.unique path
    assert codes.tolist() == [1, 0, 1] and uniques.tolist() == [5, 10**12]
    codes, uniques = implicit.factorize(pa.chunked_array([["b", "a"], ["c", "a"]]))
    assert codes.tolist() == [1, 0, 2, 0] and uniques.tolist() == ["a", "b", "c"]
