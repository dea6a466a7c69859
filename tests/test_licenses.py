"""Licence normalisation: the pure table, and what the real fixture articles state."""
from __future__ import annotations

import pytest

from biomedica_hf.ingest.parse import parse_jats
from biomedica_hf.licenses import normalize_license, subset_for


@pytest.mark.parametrize("url, code", [
    ("http://creativecommons.org/licenses/by/4.0/", "CC BY"),
    ("https://creativecommons.org/licenses/by/2.0", "CC BY"),
    ("https://creativecommons.org/licenses/by/3.0/de/deed.de", "CC BY"),
    ("http://creativecommons.org/licenses/by-sa/4.0/legalcode", "CC BY-SA"),
    ("https://creativecommons.org/licenses/by-nd/4.0/", "CC BY-ND"),
    ("https://creativecommons.org/licenses/by-nc/4.0/", "CC BY-NC"),
    ("http://creativecommons.org/licenses/by-nc-sa/3.0/igo/", "CC BY-NC-SA"),
    ("https://creativecommons.org/licenses/by-nc-nd/4.0/legalcode", "CC BY-NC-ND"),
    ("http://creativecommons.org/licenses/by-nd-nc/1.0/", "CC BY-NC-ND"),
    ("HTTPS://CreativeCommons.org/licenses/BY-NC/4.0/", "CC BY-NC"),
    ("http://creativecommons.org/publicdomain/zero/1.0/", "CC0"),
    ("https://creativecommons.org/publicdomain/mark/1.0/", "PDM"),
    ("http://creativecommons.org/licenses/publicdomain/", "PDM"),
    ("https://www.elsevier.com/tdm/userlicense/1.0/", "other"),
])
def test_url(url, code):
    assert normalize_license(url=url)[0] == code


@pytest.mark.parametrize("license_type, code", [
    ("open-access", "unknown"),       # says nothing about which licence
    ("OpenAccess", "unknown"),
    ("creative-commons", "unknown"),
    ("cc-by", "CC BY"),
    ("CC BY-NC", "CC BY-NC"),
    ("cc-by-nc-nd", "CC BY-NC-ND"),
    ("public-domain", "PDM"),
    ("cc0", "CC0"),
])
def test_license_type(license_type, code):
    assert normalize_license(license_type=license_type)[0] == code


@pytest.mark.parametrize("text, code", [
    ("This is an open-access article distributed under the terms of the Creative Commons "
     "Attribution License, which permits unrestricted use, distribution, and reproduction in "
     "any medium, provided the original work is properly cited.", "CC BY"),
    # "non-commercial" mentioned, but the licence named is plain Attribution
    ("Distributed under the Creative Commons Attribution License, which permits non-commercial "
     "and commercial reuse.", "CC BY"),
    ("This work is licensed under a Creative Commons Attribution-NonCommercial-NoDerivatives 4.0 "
     "International License", "CC BY-NC-ND"),
    ("Attribution-NonCommercial-NoDerivs", "CC BY-NC-ND"),
    ("Creative Commons Attribution Non-Commercial No Derivatives (by-nc-nd) License.",
     "CC BY-NC-ND"),
    ("Creative Commons Attribution-NonCommercial 4.0 International License", "CC BY-NC"),
    ("Creative Commons Attribution-Noncommercial-Share Alike 3.0 Unported License",
     "CC BY-NC-SA"),
    ("Creative Commons Attribution-ShareAlike 4.0", "CC BY-SA"),
    ("This is an open access article under the CC BY-NC-ND license.", "CC BY-NC-ND"),
    ("terms and conditions of the Creative Commons Attribution (CC BY) license", "CC BY"),
    ("licensed under (https://creativecommons.org/licenses/by-nc/4.0/)", "CC BY-NC"),
    ("The work is made available under the Creative Commons CC0 public domain dedication.", "CC0"),
    ("This work is in the public domain in the United States.", "PDM"),
    ("Since January 2020 Elsevier has created a COVID-19 resource centre with free information "
     "in English and Mandarin on the novel coronavirus COVID-19.", "PHE"),
    ("These permissions are granted for the duration of the World Health Organization (WHO) "
     "declaration of COVID-19 as a global pandemic.", "PHE"),
    ("made available for the duration of the public health emergency", "PHE"),
    ("Copyright © 2010 Cancer Research UK", "unknown"),          # a copyright line, no licence
    ("Copyright © 2003 Elsevier Ltd. All rights reserved.", "other"),
    ("This article is free to access under the publisher's user license.", "other"),
])
def test_prose(text, code):
    assert normalize_license(text=text)[0] == code


@pytest.mark.parametrize("hint, code", [
    ("CC BY", "CC BY"), ("CC BY-NC", "CC BY-NC"), ("CC0", "CC0"), ("CC BY-NC-ND", "CC BY-NC-ND"),
    ("CC BY-SA", "CC BY-SA"), ("NO-CC CODE", "other"), ("TDM", "other"), ("", "unknown"),
])
def test_listing_hint(hint, code):
    assert normalize_license(hint=hint)[0] == code


def test_evidence_order():
    prose_by = "distributed under the terms of the Creative Commons Attribution License"
    # URL beats @license-type, prose and hint
    assert normalize_license(url="https://creativecommons.org/licenses/by-nc/4.0/",
                             license_type="cc-by", text=prose_by, hint="CC0")[0] == "CC BY-NC"
    assert normalize_license(license_type="cc-by-nc", text=prose_by)[0] == "CC BY-NC"
    assert normalize_license(text=prose_by, hint="NO-CC CODE")[0] == "CC BY"
    # evidence that names no licence does not beat later evidence that does
    assert normalize_license(url="https://www.springer.com/tdm", hint="CC BY")[0] == "CC BY"
    assert normalize_license(license_type="open-access", text=prose_by)[0] == "CC BY"
    assert normalize_license(text="Copyright © 2010 Cancer Research UK", hint="NO-CC CODE") == (
        "other", "other")
    assert normalize_license() == ("unknown", "other")


@pytest.mark.parametrize("code, subset", [
    ("CC0", "commercial"), ("PDM", "commercial"), ("CC BY", "commercial"),
    ("CC BY-SA", "commercial"), ("CC BY-ND", "commercial"), ("PHE", "other"),
    ("CC BY-NC", "noncommercial"), ("CC BY-NC-SA", "noncommercial"),
    ("CC BY-NC-ND", "noncommercial"), ("other", "other"), ("unknown", "other"),
])
def test_subsets(code, subset):
    assert subset_for(code) == subset


# Each licence family of MANIFEST.md, as stated in the article's own XML.
@pytest.mark.parametrize("relpath, code, subset", [
    ("PMC10400000/PMC10400000.oai.xml", "CC BY", "commercial"),              # CC BY 4.0 URL
    ("PMC2231364/PMC2231364.xml", "CC BY", "commercial"),                    # CC BY 2.0 URL
    ("eLife_00133/elife00133.xml", "CC BY", "commercial"),                   # CC BY 3.0 URL
    ("PLOS_pbio.0020334/journal.pbio.0020334.xml", "CC BY", "commercial"),   # prose only
    ("PMC3500000/PMC3500000.oai.xml", "CC BY", "commercial"),                # URL only in prose
    ("PMC1790863/pone.0000217.nxml", "CC BY", "commercial"),                 # copyright-statement
    ("PLOS_pone.0160653/journal.pone.0160653.xml", "CC0", "commercial"),
    ("eLife_02935/elife02935.xml", "CC0", "commercial"),
    ("PMC2599765/ehp-116-1694.nxml", "PDM", "commercial"),
    ("PMC10000000/PMC10000000.oai.xml", "PDM", "commercial"),
    ("PMC3574550/mds526.nxml", "CC BY-NC", "noncommercial"),
    ("PMC10500000/PMC10500000.oai.xml", "CC BY-NC", "noncommercial"),
    ("PMC5000000/PMC5000000.oai.xml", "CC BY-NC", "noncommercial"),
    ("PMC10802347/nihpp-2023.12.31.573776v1.nxml", "CC BY-NC-ND", "noncommercial"),
    ("PMC9500000/PMC9500000.oai.xml", "CC BY-NC-ND", "noncommercial"),
    ("PMC4500000/PMC4500000.oai.xml", "CC BY-NC-ND", "noncommercial"),
    ("PMC7112410/main.nxml", "PHE", "other"),                           # Elsevier COVID-19
    ("PMC9000000/PMC9000000.oai.xml", "PHE", "other"),                  # PMC WHO duration
    ("PMC2994229/6605965a.nxml", "unknown", "other"),                        # no licence at all
])
def test_fixture_licences(articles_dir, relpath, code, subset):
    article = parse_jats(articles_dir / relpath)[0].article
    assert (article.license_code, article.subset) == (code, subset)


def test_fixture_licence_fields(articles_dir):
    a = parse_jats(articles_dir / "PMC10400000/PMC10400000.oai.xml")[0].article
    assert a.license_url == "https://creativecommons.org/licenses/by/4.0/"  # ali:license_ref
    assert a.license_text.startswith("This is an Open Access article distributed under")
    b = parse_jats(articles_dir / "PMC2599765/ehp-116-1694.nxml")[0].article
    assert (b.license_url, b.license_type) == (
        "http://creativecommons.org/publicdomain/mark/1.0/", "public-domain")
    c = parse_jats(articles_dir / "PMC2994229/6605965a.nxml")[0].article
    assert c.license_url is None
    assert c.license_text == "Copyright © 2010 Cancer Research UK"
