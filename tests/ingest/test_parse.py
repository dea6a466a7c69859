"""JATS parsing on the real fixture corpus (fixtures/pmc/articles, see MANIFEST.md)."""
from __future__ import annotations

import json
import re

import pytest
from lxml import etree

from biomedica_hf.ingest.parse import ParseError, format_inspection, inspect_path, parse_jats, sentence_spans

# dir: (XML file, <fig> count, figures with empty/absent caption) -- the MANIFEST.md table
MANIFEST = {
    "PLOS_pbio.0020188": ("journal.pbio.0020188.xml", 0, 0),
    "PLOS_pbio.0020334": ("journal.pbio.0020334.xml", 5, 0),
    "PLOS_pbio.0030408": ("journal.pbio.0030408.xml", 1, 0),
    "PLOS_pbio.0040088": ("journal.pbio.0040088.xml", 5, 0),
    "PLOS_pbio.1001199": ("journal.pbio.1001199.xml", 8, 0),
    "PLOS_pbio.1001473": ("journal.pbio.1001473.xml", 10, 0),
    "PLOS_pbio.2001413": ("journal.pbio.2001413.xml", 3, 0),
    "PLOS_pcbi.1000112": ("journal.pcbi.1000112.xml", 11, 0),
    "PLOS_pcbi.1002484": ("journal.pcbi.1002484.xml", 10, 0),
    "PLOS_pcbi.1004692": ("journal.pcbi.1004692.xml", 7, 0),
    "PLOS_pgen.1000052": ("journal.pgen.1000052.xml", 4, 0),
    "PLOS_pgen.1003316": ("journal.pgen.1003316.xml", 4, 0),
    "PLOS_pmed.0020124": ("journal.pmed.0020124.xml", 2, 0),
    "PLOS_pmed.0030520": ("journal.pmed.0030520.xml", 3, 0),
    "PLOS_pmed.1000097": ("journal.pmed.1000097.xml", 1, 0),
    "PLOS_pmed.1001786": ("journal.pmed.1001786.xml", 7, 0),
    "PLOS_pntd.0001041": ("journal.pntd.0001041.xml", 5, 0),
    "PLOS_pone.0008915": ("journal.pone.0008915.xml", 0, 0),
    "PLOS_pone.0058242": ("journal.pone.0058242.xml", 1, 0),
    "PLOS_pone.0067380": ("journal.pone.0067380.xml", 13, 0),
    "PLOS_pone.0160653": ("journal.pone.0160653.xml", 5, 0),
    "PLOS_pone.0185809": ("journal.pone.0185809.xml", 5, 0),
    "PLOS_ppat.0020025": ("journal.ppat.0020025.xml", 9, 0),
    "PLOS_ppat.1000166": ("journal.ppat.1000166.xml", 10, 0),
    "PLOS_ppat.1005207": ("journal.ppat.1005207.xml", 0, 0),
    "PMC10000000": ("PMC10000000.oai.xml", 0, 0),
    "PMC10200000": ("PMC10200000.oai.xml", 5, 0),
    "PMC10300000": ("PMC10300000.oai.xml", 4, 0),
    "PMC10400000": ("PMC10400000.oai.xml", 7, 0),
    "PMC10500000": ("PMC10500000.oai.xml", 0, 0),
    "PMC10653940": ("PMC10653940.oai.xml", 5, 0),
    "PMC10767945": ("PMC10767945.oai.xml", 0, 0),
    "PMC10777901": ("PMC10777901.oai.xml", 1, 0),
    "PMC10802347": ("nihpp-2023.12.31.573776v1.nxml", 4, 0),
    "PMC10821037": ("PMC10821037.oai.xml", 4, 0),
    "PMC10906259": ("PMC10906259.oai.xml", 5, 0),
    "PMC1790863": ("pone.0000217.nxml", 3, 0),
    "PMC2231364": ("PMC2231364.xml", 5, 0),
    "PMC2329613": ("1472-6831-8-11.nxml", 0, 0),
    "PMC2599765": ("ehp-116-1694.nxml", 3, 0),
    "PMC2994229": ("6605965a.nxml", 0, 0),
    "PMC3166277": ("1471-2180-11-174.nxml", 4, 0),
    "PMC3460867": ("pone.0046493.nxml", 4, 0),
    "PMC3500000": ("PMC3500000.oai.xml", 0, 0),
    "PMC3574550": ("mds526.nxml", 2, 0),
    "PMC3585041": ("pntd.0002065.nxml", 1, 0),
    "PMC4500000": ("PMC4500000.oai.xml", 0, 0),
    "PMC5000000": ("PMC5000000.oai.xml", 0, 0),
    "PMC6000000": ("PMC6000000.oai.xml", 5, 0),
    "PMC6095483": ("PMC6095483.xml", 2, 0),
    "PMC6385181": ("PMC6385181.xml", 4, 0),
    "PMC6500000": ("PMC6500000.oai.xml", 3, 0),
    "PMC7112410": ("main.nxml", 4, 0),
    "PMC7135076": ("main.nxml", 1, 0),
    "PMC7159286": ("main.nxml", 4, 0),
    "PMC7500000": ("PMC7500000.oai.xml", 2, 0),
    "PMC9000000": ("PMC9000000.oai.xml", 14, 0),
    "PMC9500000": ("PMC9500000.oai.xml", 5, 1),
    "eLife_00005": ("elife00005.xml", 14, 0),
    "eLife_00133": ("elife00133.xml", 14, 2),
    "eLife_00240": ("elife00240.xml", 1, 0),
    "eLife_00353": ("elife-00353-v1.xml", 1, 0),
    "eLife_02935": ("elife02935.xml", 19, 0),
    "eLife_04493": ("elife04493.xml", 14, 0),
    "eLife_09853": ("elife09853.xml", 1, 0),
    "eLife_103870_reviewed_preprint": ("elife-preprint-103870-v2.xml", 20, 0),
    "eLife_19405": ("elife-19405.xml", 1, 0),
    "eLife_32671_texture": ("manuscript.xml", 5, 0),
    "eLife_39122_subarticles": ("elife-39122.xml", 2, 0),
    "eLife_70357": ("elife-70357-v2.xml", 11, 0),
    "eLife_poa_06828": ("elife_poa_e06828.xml", 0, 0),
}


def parse1(articles_dir, relpath):
    (parsed,) = parse_jats(articles_dir / relpath)
    return parsed


def by_id(parsed):
    return {f.fig_id: f for f in parsed.figures}


# --------------------------------------------------------------------------------------------
# the whole corpus
# --------------------------------------------------------------------------------------------

def test_every_fixture_xml_parses(articles_dir):
    files = sorted(p for p in articles_dir.glob("*/*") if p.suffix in (".xml", ".nxml"))
    assert len(files) >= 70
    for path in files:
        if path.name == "manifest.xml":
            with pytest.raises(ParseError) as err:
                parse_jats(path)
            assert err.value.reason == "not_jats"
            continue
        parsed = parse_jats(path)
        assert parsed, path
        for p in parsed:
            assert [f.position for f in p.figures] == list(range(len(p.figures)))
            assert len({f.fig_id for f in p.figures}) == len(p.figures)


@pytest.mark.parametrize("dirname", sorted(MANIFEST))
def test_manifest_figure_counts(articles_dir, dirname):
    xml, n_figs, n_nocap = MANIFEST[dirname]
    parsed = parse_jats(articles_dir / dirname / xml)
    figures = [f for p in parsed for f in p.figures]
    assert len(figures) == n_figs
    assert sum(1 for f in figures if not f.caption) == n_nocap


def test_pmcid_from_the_xml(articles_dir):
    for dirname in ("PMC10400000", "PMC2231364", "PMC7159286", "PMC10802347", "PMC3500000"):
        xml = MANIFEST[dirname][0]
        assert parse1(articles_dir, f"{dirname}/{xml}").article.pmcid == dirname
    # PLOS publisher XML carries no PMC id; the pipeline then uses the listing's id
    assert parse1(articles_dir, "PLOS_pcbi.1002484/journal.pcbi.1002484.xml").article.pmcid == ""


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def test_graphical_abstract_has_empty_caption_and_neighbour_keeps_its_own(articles_dir):
    figs = parse1(articles_dir, "PMC9500000/PMC9500000.oai.xml").figures
    assert (figs[0].fig_id, figs[0].label, figs[0].caption, figs[0].graphics) == (
        "undfig1", "", "", ["fx1"])
    assert figs[1].fig_id == "fig1"
    assert figs[1].label == "Figure 1"
    assert figs[1].caption.startswith("High-throughput screening strategy and validation\n(A) ")
    assert all(f.caption != figs[0].caption for f in figs[1:])


def test_empty_captions_in_author_response(articles_dir):
    figs = by_id(parse1(articles_dir, "eLife_00133/elife00133.xml"))
    for fig_id, label in (("fig7", "Author response image 1."),
                          ("fig8", "Author response image 2.")):
        f = figs[fig_id]
        assert (f.label, f.caption_title, f.caption_text) == (label, "", "")
        assert (f.in_sub_article, f.sub_article_type, f.sub_article_id) == (True, "reply", "SA2")
    assert not any(f.in_sub_article for k, f in figs.items() if k not in ("fig7", "fig8"))


def test_fig_groups(articles_dir):
    figs = parse1(articles_dir, "eLife_00133/elife00133.xml").figures
    groups = {}
    for f in figs:
        if f.fig_group_id:
            groups.setdefault(f.fig_group_id, []).append(f.fig_id)
    # eLife's <fig-group> has no @id: the group is named by its main figure
    assert groups == {"fig1": ["fig1", "fig1s1", "fig1s2", "fig1s3"],
                      "fig3": ["fig3", "fig3s1", "fig3s2"], "fig6": ["fig6", "fig6s1"]}
    for dirname, n_groups in (("eLife_02935", 5), ("eLife_04493", 5), ("eLife_70357", 3),
                              ("eLife_00005", 1)):
        parsed = parse1(articles_dir, f"{dirname}/{MANIFEST[dirname][0]}")
        assert len({f.fig_group_id for f in parsed.figures if f.fig_group_id}) == n_groups


def test_figure_with_two_graphics(articles_dir):
    figs = by_id(parse1(articles_dir, "PMC7159286/main.nxml"))
    assert figs["fig3"].graphics == ["gr3a_lrg", "gr3b_lrg"]
    assert figs["fig3"].label == "Figure 3"
    assert figs["fig3"].caption.startswith("Phylogenetic trees of genetic sequences\n(A) Amplicon")
    assert [len(f.graphics) for f in figs.values()] == [1, 1, 2, 1]


def test_inline_graphics_are_not_figures(articles_dir):
    path = articles_dir / "PLOS_pcbi.1002484/journal.pcbi.1002484.xml"
    figs = parse1(articles_dir, path.relative_to(articles_dir)).figures
    tree = etree.parse(str(path), etree.XMLParser(load_dtd=False, no_network=True))
    inline = {g.get("{http://www.w3.org/1999/xlink}href") for g in tree.iter("inline-graphic")}
    assert len(inline) > 300
    hrefs = [h for f in figs for h in f.graphics]
    assert len(figs) == 10
    assert len(hrefs) == 10
    assert not inline & set(hrefs)
    assert parse1(articles_dir, "PLOS_pone.0008915/journal.pone.0008915.xml").figures == []


def test_sub_article_fragment(articles_dir):
    (parsed,) = parse_jats(articles_dir / "eLife_39122_subarticles/elife-39122.xml")
    assert parsed.article.pmcid == ""
    assert parsed.article.source_file == "elife-39122.xml"
    assert [(f.fig_id, f.graphics, f.in_sub_article, f.sub_article_type, f.sub_article_id)
            for f in parsed.figures] == [
        ("sa2fig1", ["elife-39122-sa2-fig1.jpg"], True, "reply", "sa2"),
        ("sa2fig2", ["elife-39122-sa2-fig2.jpg"], True, "reply", "sa2")]


def test_graphic_selection_rules():
    xml = """<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>
      <fig id="f1"><caption><p>One <inline-graphic xlink:href="i1"/> and
        <inline-formula><graphic xlink:href="formula"/></inline-formula>.</p></caption>
        <alternatives><graphic xlink:href="big.tif"/><graphic xlink:href="small.jpg"/>
        </alternatives>
        <graphic xlink:href="panel-b"/><graphic/></fig>
      <fig><graphic xlink:href="nocaption"/></fig>
      <fig id="f3"><caption><p>No image.</p></caption></fig>
      <table-wrap><graphic xlink:href="table"/></table-wrap>
      <supplementary-material><graphic xlink:href="supp"/></supplementary-material>
      <p><inline-graphic xlink:href="i2"/></p></body></article>"""
    figs = parse_jats(xml)[0].figures
    assert [(f.fig_id, f.graphics, f.caption) for f in figs] == [
        ("f1", ["big.tif", "panel-b"], "One [graphic] and [formula]."),
        ("fig-1", ["nocaption"], ""),
        ("f3", [], "No image.")]


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------

def test_namespaced_oai_record(articles_dir):
    parsed = parse1(articles_dir, "PMC10400000/PMC10400000.oai.xml")
    a = parsed.article
    assert (a.pmcid, a.pmid, a.doi) == ("PMC10400000", "37358264", "10.1242/jcs.260419")
    assert (a.journal, a.publisher) == ("Journal of Cell Science", "The Company of Biologists Ltd")
    assert (a.pub_date, a.year, a.article_type, a.dtd) == (
        "2023-07-28", 2023, "research-article", "1.3")
    assert (a.license_code, a.subset) == ("CC BY", "commercial")
    assert a.title == ("Mitochondrial transfer from cancer-associated fibroblasts increases "
                       "migration in aggressive breast cancer")
    assert "Tunneling nanotube" in a.keywords
    assert a.authors_count == 9
    assert all(f.graphics for f in parsed.figures)  # xlink:href still readable
    old = parse1(articles_dir, "PMC10000000/PMC10000000.oai.xml").article
    assert (old.pmcid, old.journal, old.year, old.license_code) == (
        "PMC10000000", "Chicago Medical Examiner", 1867, "PDM")
    phe = parse1(articles_dir, "PMC9000000/PMC9000000.oai.xml").article
    assert (phe.pmcid, phe.year, phe.license_code, phe.subset) == (
        "PMC9000000", 2022, "PHE", "other")


def test_nlm_23_metadata(articles_dir):
    a = parse1(articles_dir, "PMC1790863/pone.0000217.nxml").article
    assert a.journal == "PLoS ONE"                       # journal-title directly in journal-meta
    assert (a.pub_date, a.year) == ("2007-02-14", 2007)  # epub preferred over collection "2007"
    assert a.dtd == "-//NLM//DTD Journal Archiving and Interchange DTD v2.3 20070202//EN"
    assert a.source_file == "pone.0000217.nxml"
    assert a.authors_count == 4


def test_article_text_fields(articles_dir):
    a = parse1(articles_dir, "eLife_00133/elife00133.xml").article
    assert a.authors_count == 7                          # the reviewing editor is not an author
    assert a.abstract.startswith("In neurons, microtubules (MTs) span the length")
    assert "eLife digest" not in a.abstract
    assert "Nerve cells are generally" not in a.abstract
    assert a.full_text.startswith("Introduction\n\nNeurons are highly polarized cells")
    assert "We have followed the suggestions of the reviewers" not in a.full_text  # sub-article
    assert "Author response image 1." not in a.full_text
    plos = parse1(articles_dir, "PLOS_pbio.1001199/journal.pbio.1001199.xml").article
    assert "Author Summary" not in plos.abstract


def test_dtd_only_entities(articles_dir):
    text = parse1(articles_dir, "PLOS_pbio.0020334/journal.pbio.0020334.xml").article.full_text
    assert "huIs7[hs::bar-1ΔNT]" in text
    xml = ('<!DOCTYPE article PUBLIC "-//NLM//DTD Journal Publishing DTD v3.0 20080202//EN" '
           '"http://dtd.nlm.nih.gov/publishing/3.0/journalpublishing3.dtd">'
           '<article><body><fig id="f"><caption><p>bar-1&Delta;NT &lsqb;x&rsqb;&ensp;&chi;'
           '&#x02013;&szlig;</p></caption></fig></body></article>')
    assert parse_jats(xml)[0].figures[0].caption_text == "bar-1ΔNT [x] χ–ß"


def test_whitespace_at_inline_markup(articles_dir):
    figs = parse1(articles_dir, "PMC3460867/pone.0046493.nxml").figures
    # raw: "by M<italic>m</italic>PPOX."
    assert figs[1].caption_title == "Inhibition of Lip-HSL proteins by MmPPOX."
    assert parse1(articles_dir, "PMC3460867/pone.0046493.nxml").article.title.startswith(
        "MmPPOX Inhibits Mycobacterium tuberculosis Lipolytic Enzymes")
    ppat = parse1(articles_dir, "PLOS_ppat.1000166/journal.ppat.1000166.xml").figures
    assert "Growth inhibition by H2O2 as determined by agar diffusion assays." in [
        f.caption_title for f in ppat]
    xml = ("<article><body><fig id='f'><caption><title> Student's <italic>t</italic>-test "
           "</title><p>a<break/>b</p><p>c\n\n  d <xref rid='x'>Fig 2</xref>.</p></caption>"
           "</fig></body></article>")
    fig = parse_jats(xml)[0].figures[0]
    assert (fig.caption_title, fig.caption_text) == ("Student's t-test", "a b\nc d Fig 2.")
    assert fig.caption == "Student's t-test a b\nc d Fig 2."


def test_pretty_printed_line_break_before_punctuation(articles_dir):
    # Elsevier nXML: "(<xref ...>figure 1</xref>\n)." is "(figure 1)."
    fig1 = parse1(articles_dir, "PMC7159286/main.nxml").figures[0]
    assert fig1.references[0].sentence == (
        "The family cluster of six patients (patients 1–6) flew from Shenzhen to Wuhan on "
        "Dec 29, 2019, and flew back to Shenzhen on Jan 4, 2020 (figure 1).")


# --------------------------------------------------------------------------------------------
# in-text references
# --------------------------------------------------------------------------------------------

def test_references_pmc10400000(articles_dir):
    parsed = parse1(articles_dir, "PMC10400000/PMC10400000.oai.xml")
    captions = " ".join(f.caption for f in parsed.figures)
    assert all(f.references for f in parsed.figures)
    total = 0
    for f in parsed.figures:
        sentences = [r.sentence for r in f.references]
        assert len(sentences) == len(set(sentences))
        for r in f.references:
            assert r.sentence in r.paragraph
            assert r.xref_text in r.sentence
            assert r.sentence not in captions
        total += len(f.references)
    assert 40 <= total <= 57  # 57 fig xrefs, some citing the same figure twice in one sentence
    first = by_id(parsed)["JCS260419F1"].references[0]
    assert first.xref_text == "Fig. 1"
    assert first.sentence == (
        "After allowing the cells to compact in round-bottom plates for 3 days, the spheroids "
        "were embedded in 4.5 mg/ml collagen with or without the presence of surrounding "
        "CAF01–mCherry cells in the matrix (Fig. 1A) (Attieh et al., 2017).")


def test_multi_rid_references(articles_dir):
    figs = by_id(parse1(articles_dir, "eLife_00005/elife00005.xml"))
    for fig_id in ("fig7", "fig8", "fig9", "fig10"):  # rid="fig7 fig8 fig9 fig10"
        assert "Figures 7–10" in [r.xref_text for r in figs[fig_id].references]
    assert "Figures 7–10" not in [r.xref_text for r in figs["fig9s1"].references]
    assert "Figures 5 and 6A" in [r.xref_text for r in figs["fig6"].references]


RANGE_XML = """<article xmlns:xlink="http://www.w3.org/1999/xlink"><body>
<p>White matter regions used for the main analysis (Figs <xref ref-type="fig"
rid="pcbi.1004692.g003">3</xref>&#x02013;<xref ref-type="fig" rid="pcbi.1004692.g005">5</xref>)
in left and right hemisphere. Compare Figure <xref ref-type="fig" rid="g1">1</xref> to
<xref ref-type="fig" rid="g2">2</xref>, see Fig. <xref ref-type="fig" rid="grp">S</xref> and
Fig. <xref ref-type="fig" rid="g1">1</xref> again, e.g. <xref ref-type="fig" rid="g1-img">1b</xref>,
i.e. the <xref ref-type="fig" rid="nowhere">Figure 9</xref>.</p>
<p>Figs <xref ref-type="fig" rid="g1 pcbi.1004692.g005">1 and 5</xref> differ by 3.5 vs. 4.2 units
(J. Smith et al. 2001). A new sentence cites none.</p>
<fig id="g1"><graphic id="g1-img" xlink:href="a"/></fig>
<fig-group id="grp"><fig id="g2"><graphic xlink:href="b"/></fig>
<fig id="pcbi.1004692.g003"><graphic xlink:href="c"/></fig></fig-group>
<fig id="pcbi.1004692.g004"><graphic xlink:href="d"/></fig>
<fig id="pcbi.1004692.g005"><graphic xlink:href="e"/></fig>
</body></article>"""


def test_reference_ranges_groups_and_ids():
    figs = by_id(parse_jats(RANGE_XML)[0])
    refs = {k: [(r.xref_text, r.sentence[:30]) for r in f.references] for k, f in figs.items()}
    first = "White matter regions used for "
    second = "Compare Figure 1 to 2, see Fig"
    third = "Figs 1 and 5 differ by 3.5 vs."
    assert refs["pcbi.1004692.g004"] == [("3–5", first)]
    assert refs["pcbi.1004692.g003"] == [("3–5", first), ("S", second)]
    assert refs["pcbi.1004692.g005"] == [("3–5", first), ("1 and 5", third)]
    # range "1 to 2", fig-group id, panel (graphic) id; one reference per sentence
    assert refs["g1"] == [("1 to 2", second), ("1 and 5", third)]
    assert refs["g2"] == [("1 to 2", second)]
    g1 = figs["g1"].references[0]
    assert g1.sentence == ("Compare Figure 1 to 2, see Fig. S and Fig. 1 again, e.g. 1b, "
                           "i.e. the Figure 9.")
    assert g1.paragraph.startswith("White matter regions used for the main analysis (Figs 3–5)")
    assert figs["g1"].references[1].sentence == (
        "Figs 1 and 5 differ by 3.5 vs. 4.2 units (J. Smith et al. 2001).")


def test_sentence_spans():
    text = ("Cells grew (Fig. 2A; Figs. 3 and 4). Smith et al. showed e.g. a 2.5-fold rise vs. "
            "controls, i.e. approx. 3 units. Next sentence? \u201cQuoted\u201d one! (A) panel.")
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Cells grew (Fig. 2A; Figs. 3 and 4).",
        "Smith et al. showed e.g. a 2.5-fold rise vs. controls, i.e. approx. 3 units.",
        "Next sentence?", "\u201cQuoted\u201d one!", "(A) panel."]
    assert sentence_spans("") == []


def test_sentence_spans_of_a_huge_paragraph_are_linear_and_the_same(articles_dir):
    """A paragraph of ~2 MB (real full texts joined, as a damaged article with no paragraph breaks gives) splits
    into the sentences of its parts, in linear time (the rest of the text is never copied per sentence end: the
    quadratic version took ~7 CPU s here)."""
    import time

    parts = [parse_jats(articles_dir / a / f)[0].article.full_text.replace("\n\n", " ")
             for a, f in (("PMC3166277", "1471-2180-11-174.nxml"), ("PMC6385181", "PMC6385181.xml"))]
    one = [parts[0][a:b] for a, b in sentence_spans(parts[0])]
    assert len(one) > 100
    text = " ".join(parts * 30)
    assert len(text) > 1_000_000
    t0 = time.process_time()
    spans = sentence_spans(text)
    assert time.process_time() - t0 < 3.0
    # the first part's sentences, except its last (no full stop: it runs on into the next part)
    assert [text[a:b] for a, b in spans[:len(one) - 1]] == one[:-1]
    assert spans[-1][1] == len(text)
    assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))


# --------------------------------------------------------------------------------------------
# inputs, wrappers, safety, errors
# --------------------------------------------------------------------------------------------

def _bare_article(path) -> bytes:
    data = path.read_bytes()
    data = re.sub(rb"^\s*<\?xml[^>]*\?>", b"", data)
    return re.sub(rb"^\s*<!DOCTYPE[^>]*>", b"", data.lstrip())


def test_articles_wrapper_with_two_articles(articles_dir):
    data = (b"<articles>" + _bare_article(articles_dir / "PMC3166277/1471-2180-11-174.nxml")
            + _bare_article(articles_dir / "PMC6385181/PMC6385181.xml") + b"</articles>")
    parsed = parse_jats(data, source_file="two.xml")
    assert [p.article.pmcid for p in parsed] == ["PMC3166277", "PMC6385181"]
    assert [len(p.figures) for p in parsed] == [4, 4]
    assert {p.article.source_file for p in parsed} == {"two.xml"}


def test_input_forms(articles_dir):
    path = articles_dir / "PLOS_pcbi.1004692/journal.pcbi.1004692.xml"  # encoding="utf-8"
    from_path = parse_jats(path)[0]
    from_str_path = parse_jats(str(path))[0]
    from_bytes = parse_jats(path.read_bytes())[0]
    from_text = parse_jats(path.read_text(encoding="utf-8"))[0]
    assert from_path.article.source_file == from_str_path.article.source_file == path.name
    assert from_bytes.article.source_file is None
    assert from_path == from_str_path
    assert from_bytes.figures == from_text.figures == from_path.figures
    latin1 = '\ufeff<?xml version="1.0" encoding="ISO-8859-1"?><article><body><fig><caption><p>é'
    assert parse_jats(latin1 + "</p></caption></fig></body></article>")[0].figures[0].caption == "é"


def test_external_entities_are_not_expanded():
    xml = b"""<?xml version="1.0"?>
<!DOCTYPE article [<!ENTITY e SYSTEM "file:///etc/passwd"><!ENTITY % p SYSTEM "file:///etc/passwd">
<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<article><front><article-meta><title-group><article-title>T&e;</article-title></title-group>
</article-meta></front><body><p>x&e;y &lol2; <xref ref-type="fig" rid="f">Fig 1</xref>.</p>
<fig id="f"><caption><p>c&e;d &lol;</p></caption></fig></body></article>"""
    (parsed,) = parse_jats(xml)
    texts = [parsed.article.title, parsed.article.full_text, parsed.figures[0].caption,
             parsed.figures[0].references[0].sentence]
    assert not any("root:" in t for t in texts)
    assert parsed.article.title == "T"
    assert parsed.figures[0].caption == "cd lol"
    assert parsed.article.full_text == "xy Fig 1."  # nested (amplifying) entity left out


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"), (b"  \n ", "empty"), (b"<articles/>", "empty"),
    (b"<article><body><p>unclosed</body></article>", "xml_syntax"),
    (b"<dar><documents/></dar>", "not_jats"),
    (b"<OAI-PMH><error code='idDoesNotExist'/></OAI-PMH>", "not_jats"),
])
def test_parse_errors(data, reason):
    with pytest.raises(ParseError) as err:
        parse_jats(data)
    assert err.value.reason == reason
    assert err.value.detail


def test_texture_manifest_is_not_jats(articles_dir):
    with pytest.raises(ParseError) as err:
        parse_jats(articles_dir / "eLife_32671_texture/manifest.xml")
    assert err.value.reason == "not_jats"


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------

def test_inspect_truncated_package(articles_dir):
    d = inspect_path(articles_dir / "PMC10802347/package/PMC10802347.truncated.tar.gz")
    json.dumps(d)
    assert d["kind"] == "package"
    # read as the build reads packages (io.gzstream: tarfile's stream reader), so the error is the build's
    assert any("ReadError: unexpected end of data" in w for w in d["warnings"])
    assert "PMC10802347/nihpp-2023.12.31.573776v1-f0001.jpg" not in d["members"]
    (article,) = d["articles"]
    assert (article["pmcid"], article["license_code"], article["n_figures"]) == (
        "PMC10802347", "CC BY-NC-ND", 4)
    assert "full_text" not in article
    assert article["full_text_chars"] > 30000
    assert article["figures"][0]["first_reference"]
    text = format_inspection(d)
    assert "PMC10802347" in text
    assert "CC BY-NC-ND (noncommercial)" in text
    assert "unexpected end of data" in text


def test_inspect_complete_package_and_xml(articles_dir):
    d = inspect_path(articles_dir / "PMC7159286/package/PMC7159286.tar.gz")
    (article,) = d["articles"]
    assert d["warnings"] == []
    assert article["warnings"] == []  # every graphic has its file
    fig3 = article["figures"][2]
    assert (fig3["id"], fig3["graphics"], fig3["n_references"]) == (
        "fig3", ["gr3a_lrg", "gr3b_lrg"], 1)
    x = inspect_path(articles_dir / "PMC9500000/PMC9500000.oai.xml")
    assert x["kind"] == "xml"
    assert x["articles"][0]["figures"][0]["flags"] == ["empty_caption"]
    bad = inspect_path(articles_dir / "eLife_32671_texture/manifest.xml")
    assert bad["articles"] == []
    assert "not_jats" in bad["warnings"][0]


# --------------------------------------------------------------------------------------------
# captions: paragraphs, formulas, DOI boilerplate (issue 17)
# --------------------------------------------------------------------------------------------

def _all_figures(articles_dir):
    for path in sorted(articles_dir.rglob("*")):
        if path.suffix.lower() in (".xml", ".nxml"):
            try:
                parsed = parse_jats(path)
            except ParseError:
                continue
            for art in parsed:
                yield path, art.figures


def test_caption_paragraphs_are_separated_by_a_newline(articles_dir):
    figs = by_id(parse1(articles_dir, "PMC7159286/main.nxml"))
    wuhan = next(f for f in figs.values() if "Shenzhen family cluster" in f.caption)
    assert "their contacts in Wuhan\nDates filled in red" in wuhan.caption
    assert "Wuhan Dates" not in wuhan.caption


def test_inline_formula_and_graphic_text_or_visible_placeholder(articles_dir):
    fig = parse1(articles_dir, "PLOS_pcbi.1002484/journal.pcbi.1002484.xml").figures[0]
    assert "(here plotted as [formula]) for a 5 kb plasmid" in fig.caption   # formula only as an image
    assert "()" not in fig.caption
    assert "as )" not in fig.caption
    mml = "http://www.w3.org/1998/Math/MathML"
    xml = f"""<article xmlns:mml="{mml}" xmlns:xlink="http://www.w3.org/1999/xlink"><body><fig id="f">
      <caption><p>TeX <inline-formula><tex-math>\\alpha_1</tex-math></inline-formula>, MathML
      <inline-formula><mml:math><mml:msup><mml:mi>x</mml:mi><mml:mn>2</mml:mn></mml:msup></mml:math></inline-formula>,
      alt <inline-formula><alt-text>delta G</alt-text><inline-graphic xlink:href="e1"/></inline-formula>,
      mathml alttext <inline-formula><mml:math alttext="k_on"/></inline-formula>, bare
      <inline-formula><inline-graphic xlink:href="e2"/></inline-formula>, icon
      <inline-graphic xlink:href="i1"><alt-text>arrow</alt-text></inline-graphic> and
      <inline-graphic xlink:href="i2"/>.</p></caption><graphic xlink:href="g"/></fig></body></article>"""
    text = parse_jats(xml)[0].figures[0].caption_text
    assert text == ("TeX \\alpha_1, MathML x2, alt delta G, mathml alttext k_on, bare [formula], icon arrow "
                    "and [graphic].")


def test_elife_doi_boilerplate_moves_to_caption_doi(articles_dir):
    doi = re.compile(r"DOI:|dx\.doi\.org|doi\.org/10\.7554", re.I)
    elife = moved = 0
    for path, figures in _all_figures(articles_dir):
        for f in figures:
            assert not doi.search(f.caption), (path.name, f.fig_id, f.caption[-120:])
            if path.parent.name.startswith("eLife"):
                elife += 1
                moved += f.caption_doi is not None
    assert elife > 100
    assert moved >= 50
    fig1 = by_id(parse1(articles_dir, "eLife_00005/elife00005.xml"))["fig1"]
    assert fig1.caption_doi == "10.7554/eLife.00005.003"
    assert fig1.caption.endswith("particles of the PRC2-AEBP2 complex.")
    # the DOI of the figure stays available, in the sample's metadata
    from biomedica_hf.ingest.article import _figure_meta

    assert _figure_meta(parse1(articles_dir, "eLife_00005/elife00005.xml").article, fig1, 0, "g")[
        "caption_doi"] == "10.7554/eLife.00005.003"
    xml = ("<article><body><fig id='f'><caption><p>Cells. DOI: http://dx.doi.org/10.7554/eLife.1.002</p>"
           "</caption></fig><fig id='g'><caption><p>See doi:10.1/x in the text.</p></caption></fig></body></article>")
    f, g = parse_jats(xml)[0].figures
    assert (f.caption, f.caption_doi) == ("Cells.", "10.7554/eLife.1.002")
    assert (g.caption, g.caption_doi) == ("See doi:10.1/x in the text.", None)


# --------------------------------------------------------------------------------------------
# in-text references: back matter out, table cells in, "Fig. 9. B" one sentence (issue 17)
# --------------------------------------------------------------------------------------------

def test_back_matter_is_not_an_in_text_reference(articles_dir):
    figs = by_id(parse1(articles_dir, "PMC9500000/PMC9500000.oai.xml"))
    sentences = [r.sentence for f in figs.values() for r in f.references]
    assert sentences
    assert (not [s for s in sentences if "performed experiments related to" in s
                              or "differentiated cells for experiments" in s])
    assert all("Author contributions" not in r.paragraph for f in figs.values() for r in f.references)
    assert figs["fig1"].references
    assert figs["fig4"].references   # the body still cites them
    xml = """<article><body><p>Body cites <xref ref-type="fig" rid="f1">Fig 1</xref>.</p>
      <fig id="f1"><caption><p>Cap cites <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></caption></fig>
      <sec sec-type="author-contributions"><p>A did <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></sec>
      <sec><title>Acknowledgements</title><p>Thanks for <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></sec>
      <p>Note<fn><p>Footnote on <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></fn></p></body>
      <back><ack><p>We thank X (<xref ref-type="fig" rid="f1">Fig 1</xref>).</p></ack>
      <fn-group><fn><p>See <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></fn></fn-group>
      <app-group><app><p>Appendix text on <xref ref-type="fig" rid="f1">Fig 1</xref>.</p></app></app-group>
      </back></article>"""
    refs = [r.sentence for r in parse_jats(xml)[0].figures[0].references]
    assert refs == ["Body cites Fig 1.", "Appendix text on Fig 1."]


def test_table_cells_cite_figures(articles_dir):
    fig4 = by_id(parse1(articles_dir, "PMC9000000/PMC9000000.oai.xml"))["Fig4"]
    in_table = [r.sentence for r in fig4.references if "denoted by" in r.sentence]
    assert len(in_table) == 3, [r.sentence for r in fig4.references]
    assert in_table[0].startswith("Displacement (using (5)) of the six specific points as marked in Fig. 4")
    assert all("Fig. 4" in r.xref_text or r.xref_text == "4" for r in fig4.references if r.sentence in in_table)


def test_panel_letter_after_figure_number_is_not_a_sentence_end(articles_dir):
    t = "Signal was seen in muscle (Fig. 9. B). Second, we checked. See Figure 2. A new idea. In Table 3. C was low."
    assert [t[a:b] for a, b in sentence_spans(t)] == [
        "Signal was seen in muscle (Fig. 9. B).", "Second, we checked.", "See Figure 2.", "A new idea.",
        "In Table 3.", "C was low."]
    figs = by_id(parse1(articles_dir, "eLife_103870_reviewed_preprint/elife-preprint-103870-v2.xml"))
    (sentence,) = [r.sentence for r in figs["fig9"].references if "9. B" in r.xref_text]
    assert sentence.startswith("Indeed, a clear ER-localized signal")
    assert sentence.endswith("in muscle (Fig. 9. B).")
