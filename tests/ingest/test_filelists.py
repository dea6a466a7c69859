"""File-list, PMCID-list, S3-listing and Cloud-metadata parsers on the real fixture samples."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from biomedica_hf.ingest.sources.filelists import (
    AWS,
    BULK,
    LEGACY,
    LEGACY_TXT,
    PMCIDS,
    normalize_date,
    normalize_pmcid,
    parse_cloud_metadata,
    parse_metadata_key,
    parse_pmcid_list,
    parse_s3_list,
    read_file_list,
    read_listing,
    split_s3_url,
    versions_from_prefixes,
)

ISO = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
CAPSTONE = "oa_file_list.capstone_10000rows_noheader.csv"
SEAN = "oa_file_list.seanBr97_4rows_excel_dates.csv"
CURIEO = "oa_bulk_filelist.curieo_5rows.csv"
AWS_HEADER = "Key,ETag,Article Citation,AccessionID,Last Updated UTC (YYYY-MM-DD HH:MM:SS),PMID,License,Retracted"


def test_capstone_headerless_10000_rows(filelists_dir):
    fl = read_file_list(filelists_dir / CAPSTONE)
    assert fl.kind == LEGACY
    assert fl.header is None
    assert len(fl) == 10_000
    assert fl.bad_rows == []
    assert fl.warnings == []
    assert Counter(r.license_hint for r in fl) == {"NO-CC CODE": 7_500, "CC BY": 2_485, "CC0": 15}
    assert sum(r.pmid is None for r in fl) == 585
    first, last = fl.refs[0], fl.refs[-1]
    assert (first.pmcid, first.location, first.pmid) == ("PMC13900", "oa_package/08/e0/PMC13900.tar.gz", "11250746")
    assert first.citation == "Breast Cancer Res. 2001 Nov 2; 3(1):55-60"
    assert first.last_updated == "2019-11-05 11:56:12"
    assert first.extra["line"] == 1
    assert last.pmcid == "PMC549171"
    assert last.extra["line"] == 10_000
    assert all(ISO.match(r.last_updated) for r in fl)
    assert len({r.pmcid for r in fl}) == 10_000


def test_sean_crlf_header_and_spreadsheet_dates(filelists_dir):
    raw = (filelists_dir / SEAN).read_bytes()
    assert b"\r\n" in raw  # the real file is CRLF
    fl = read_file_list(filelists_dir / SEAN)
    assert fl.kind == LEGACY
    assert fl.header[0] == "File"
    assert fl.bad_rows == []
    assert fl.warnings == []
    assert [r.pmcid for r in fl] == ["PMC7112410", "PMC7135076", "PMC7159286", "PMC7159299"]
    by = {r.pmcid: r for r in fl}
    assert by["PMC7112410"].last_updated == "2020-04-06 14:56:00"
    assert by["PMC7112410"].extra["last_updated_raw"] == "06-04-20 14:56"
    assert by["PMC7135076"].last_updated == "2020-06-18 12:56:00"
    assert by["PMC7159286"].last_updated == "2021-01-15 17:16:00"
    assert by["PMC7112410"].location == "oa_package/ac/6a/PMC7112410.tar.gz"
    assert by["PMC7112410"].pmid == "12781535"
    assert by["PMC7112410"].license_hint == "NO-CC CODE"
    assert by["PMC7135076"].citation == "Lancet. 2020 Jan 30 15-21 February; 395(10223):507-513"
    assert not any(r.citation.endswith("\r") or r.license_hint.endswith("\r") for r in fl)


def test_bulk_filelist_quoted_fields_and_retracted(filelists_dir):
    fl = read_file_list(filelists_dir / CURIEO)
    assert fl.kind == BULK
    assert len(fl) == 5
    assert fl.bad_rows == []
    r = fl.refs[0]
    assert (r.pmcid, r.location, r.pmid) == ("PMC6908519", "PMC006xxxxxx/PMC6908519.xml", "31867269")
    assert r.citation == "Front Oncol. 2019 Dec 6; 9:1306"
    assert r.license_hint == "CC BY"
    assert r.last_updated == "2024-02-07 23:35:31"
    assert r.retracted is False
    assert fl.refs[-1].pmcid == "PMC7615602"  # last line has no trailing newline


def test_bulk_rows_without_header_detected_by_content(filelists_dir):
    lines = (filelists_dir / CURIEO).read_text().splitlines()[1:]
    fl = read_file_list("\n".join(lines).encode())
    assert fl.kind == BULK
    assert len(fl) == 5
    assert fl.header is None


def test_aws_header_variant(filelists_dir):
    # header confirmed from a quoted real file; no real data rows exist in the fixtures, so rows are the
    # real bulk rows re-shaped to the 8 AWS columns.
    body = [AWS_HEADER]
    for r in read_file_list(filelists_dir / CURIEO):
        body.append(f'oa_comm/xml/all/{r.pmcid}.xml,"0123456789abcdef0123456789abcdef","{r.citation}",'
                    f"{r.pmcid},{r.last_updated},{r.pmid},{r.license_hint},yes")
    fl = read_file_list("\r\n".join(body).encode())
    assert fl.kind == AWS
    assert len(fl) == 5
    assert fl.bad_rows == []
    r = fl.refs[0]
    assert r.location == "oa_comm/xml/all/PMC6908519.xml"
    assert r.extra["etag"] == "0123456789abcdef0123456789abcdef"
    assert r.retracted is True
    assert r.citation == "Front Oncol. 2019 Dec 6; 9:1306"


def test_bad_rows_are_collected_not_raised(filelists_dir):
    text = (filelists_dir / SEAN).read_bytes().decode("utf-8")
    text += "oa_package/00/00/XYZ.tar.gz,Some cite,notanid,2020-01-01 00:00:00,1,CC BY\r\n"
    text += "oa_package/00/00/PMC1.tar.gz,too,few\r\n"
    text += "oa_package/00/01/PMC2.tar.gz,\"Cite, with comma\",PMC2,sometime,,CC0\r\n"
    fl = read_file_list(text.encode())
    assert [r.pmcid for r in fl][-1] == "PMC2"
    assert len(fl) == 5
    assert fl.bad_rows == [(6, "bad_pmcid: 'notanid'"), (7, "wrong_column_count: 3 != 6")]
    assert fl.warnings == [(8, "unparseable_date: 'sometime'")]
    last = fl.refs[-1]
    assert last.last_updated == "sometime"
    assert last.pmid is None
    assert last.citation == "Cite, with comma"


def test_normalize_date():
    assert normalize_date("06-04-20 14:56") == "2020-04-06 14:56:00"
    assert normalize_date("15-01-21 17:16") == "2021-01-15 17:16:00"
    assert normalize_date("2019-11-05 11:56:12") == "2019-11-05 11:56:12"
    assert normalize_date("2019-11-05T11:56:12Z") == "2019-11-05 11:56:12"
    assert normalize_date("2019-11-05") == "2019-11-05 00:00:00"
    assert normalize_date("06-04-2020 14:56:07") == "2020-04-06 14:56:07"
    assert normalize_date("31-02-20 10:00") is None
    assert normalize_date("yesterday") is None


def test_pmcid_list():
    text = "# my ids\nPMC7112410\n\n7135076  # bare number\nPMC7988253.2\npmc7112410\nnot-an-id\nPMC1, extra\n"
    fl = parse_pmcid_list(text)
    assert fl.kind == PMCIDS
    assert [(r.pmcid, r.version) for r in fl] == [("PMC7112410", None), ("PMC7135076", None),
                                                  ("PMC7988253", 2), ("PMC1", None)]
    assert fl.bad_rows == [(6, "duplicate: pmc7112410"), (7, "bad_pmcid: 'not-an-id'")]
    assert normalize_pmcid("PMC007") == ("PMC7", None)
    assert normalize_pmcid("PMC") is None


def test_read_listing_sniffs_format(filelists_dir, tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("PMC1\nPMC2.3\n")
    assert read_listing(p).kind == PMCIDS
    assert len(read_listing(p)) == 2
    assert read_listing(filelists_dir / SEAN).kind == LEGACY
    assert read_listing(filelists_dir / CAPSTONE).kind == LEGACY
    assert read_listing(filelists_dir / CURIEO).kind == BULK


def test_legacy_txt_list():
    # oa_file_list.txt layout as remembered (not confirmed by a real sample): timestamp, then TAB rows
    text = ("2020-02-28 10:00:00\n"
            "oa_package/08/e0/PMC13900.tar.gz\tBreast Cancer Res. 2001 Nov 2; 3(1):55-60\tPMC13900\tPMID:11250746\tNO-CC CODE\n"
            "oa_package/b0/ac/PMC13901.tar.gz\tBreast Cancer Res. 2001 Nov 9; 3(1):61-65\tPMC13901\t\tCC BY\n")
    fl = read_file_list(text.encode())
    assert fl.kind == LEGACY_TXT
    assert [r.pmcid for r in fl] == ["PMC13900", "PMC13901"]
    assert fl.refs[0].pmid == "11250746"
    assert fl.refs[1].pmid is None
    assert fl.refs[1].license_hint == "CC BY"


def test_s3_listing_samples(filelists_dir):
    d = filelists_dir / "pmc_cloud_2026"
    one = parse_s3_list((d / "s3_list_PMC4924218.xml").read_bytes())
    assert one.prefix == "PMC4924218."
    assert one.common_prefixes == ["PMC4924218.1/"]
    assert not one.is_truncated
    assert versions_from_prefixes(one.common_prefixes, "PMC4924218") == [1]
    two = parse_s3_list((d / "s3_list_PMC7988253_two_versions.xml").read_bytes())
    assert two.key_count == 2
    assert versions_from_prefixes(two.common_prefixes) == [1, 2]
    assert versions_from_prefixes(two.common_prefixes, "PMC798825") == []
    assert parse_metadata_key("metadata/PMC7988253.2.json") == ("PMC7988253", 2)
    assert parse_metadata_key("metadata/readme.txt") is None


def test_s3_listing_contents_and_pagination():
    xml = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           "<Name>pmc-oa-opendata</Name><Prefix>metadata/</Prefix><KeyCount>1</KeyCount><MaxKeys>1</MaxKeys>"
           "<IsTruncated>true</IsTruncated><Contents><Key>metadata/PMC1.1.json</Key>"
           "<LastModified>2026-05-01T00:00:00.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>12</Size>"
           "</Contents><NextContinuationToken>tok==</NextContinuationToken></ListBucketResult>")
    page = parse_s3_list(xml)
    assert page.is_truncated
    assert page.next_token == "tok=="
    assert [(o.key, o.size, o.etag) for o in page.contents] == [("metadata/PMC1.1.json", 12, "abc")]
    with pytest.raises(ValueError):
        parse_s3_list(b"<Error><Code>AccessDenied</Code></Error>")


def test_cloud_metadata_samples(filelists_dir):
    d = filelists_dir / "pmc_cloud_2026"
    m = parse_cloud_metadata((d / "s3_meta_PMC7988253.2.json").read_bytes())
    assert (m["pmcid"], m["version"], m["pmid"], m["license_code"]) == ("PMC7988253", 2, "33760979", "CC BY")
    assert m["xml"] == [("PMC7988253.2/PMC7988253.2.xml", "4a7768a6d7f1dab25551433ccfbc58d5")]
    assert len(m["media"]) == 12
    assert (m["media"][0] == ("PMC7988253.2/484_2021_2114_Fig10_HTML.jpg",
                                                       "722d5ed463a859a01a5b912b0cc07e34"))
    assert m["bucket"] == "pmc-oa-opendata"
    assert m["is_open_access"]
    assert not m["is_retracted"]
    assert m["raw"]["pmid"] == 33760979
    am = parse_cloud_metadata((d / "s3_meta_PMC7983342.1_AM.json").read_text())
    assert am["license_code"] == "TDM"
    assert am["is_open_access"] is False
    assert am["mid"] == "NIHMS1675085"
    assert am["media"] == []
    assert am["pdf"] == []
    nc = parse_cloud_metadata((d / "s3_meta_PMC4599423.1_media.json").read_bytes())
    assert nc["license_code"] == "CC BY-NC"
    assert (nc["media"] == [("PMC4599423.1/jah30004-e001936-f1.jpg",
                                                                 "d3f7c932a088ff556dfef86a9a436e60")])
    nomedia = parse_cloud_metadata((d / "s3_meta_PMC4924218.1.json").read_bytes())
    assert nomedia["media"] == []
    assert nomedia["text"][0][0] == "PMC4924218.1/PMC4924218.1.txt"
    ncnd = parse_cloud_metadata((d / "s3_meta_PMC12876392.1.json").read_bytes())
    assert ncnd["license_code"] == "CC BY-NC-ND"
    assert len(ncnd["media"]) == 5


def test_split_s3_url():
    assert split_s3_url("s3://pmc-oa-opendata/PMC1.1/a%20b.jpg?md5=0123456789abcdef0123456789ABCDEF") == \
        ("pmc-oa-opendata", "PMC1.1/a b.jpg", "0123456789abcdef0123456789abcdef")
    assert split_s3_url("https://h/PMC1.1/x.xml") == (None, "PMC1.1/x.xml", None)
