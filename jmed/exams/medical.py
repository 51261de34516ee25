"""医師国家試験 (the Japanese National Medical Licensing Examination, JMLE): IgakuQA, IgakuQA119, JMLE2026,
JJSIMQA. The 112th was held in 2018. Pass rule: the datasets README, from MHLW's announcements."""

from jmed.exams import ExamKind

REQUIRED_LINE = 0.80  # required section: at least 80 % of its points
KINKI_LIMIT = 4  # fail with 4 or more contraindicated choices selected (禁忌肢問題選択数 3問以下)
DEFAULT_GENERAL_LINE = 0.70  # general+clinical line for a year not in GENERAL_LINES: an approximation

# General+clinical pass line per exam year (必修を除いた一般問題及び臨床実地問題, 1 point each), as
# (points needed, points total) from MHLW's pass announcements (合格基準), or a fraction where only
# the rate was found. Sources (as quoted by secondary pages, checked 2026-11): 2018 (112th) 208/299
# (savingdoctor.com quoting MHLW); 2019 (113th) 209/296 (jmedj.co.jp); 2020 (114th) 217/299
# (医学界新聞, ishiyaku-k.com quoting MHLW); 2021 (115th) 209/300 (newtongym8.com quoting MHLW);
# 2022 (116th) 214/297 (doctor.mynavi.jp quoting MHLW); 2023 (117th) 74.6 % (PLOS Digit Health
# 2024, Tanaka et al.); 2024 (118th) 76.7 % (medilink-study.com); 2025 (119th) 221/300
# (mama.smt.docomo.ne.jp). Other years (e.g. 2026, the 120th) are unknown: DEFAULT_GENERAL_LINE.
GENERAL_LINES: dict[int, tuple[float, float]] = {
    2018: (208, 299),
    2019: (209, 296),
    2020: (217, 299),
    2021: (209, 300),
    2022: (214, 297),
    2023: (0.746, 1),
    2024: (0.767, 1),
    2025: (221, 300),
}


def general_line(year: int | None) -> float:
    """The general+clinical pass line of an exam year, as a fraction of its points."""
    if year in GENERAL_LINES:
        need, total = GENERAL_LINES[year]
        return need / total
    return DEFAULT_GENERAL_LINE


def pass_fail(
    required_points,
    required_total,
    general_points,
    general_total,
    kinki: int,
    year: int | None,
    kinki_known: bool = True,
) -> dict:
    """The exam's pass rule (datasets README): required ≥ 80 % of its points, general+clinical ≥ the
    year's line, fewer than 4 contraindicated choices. No verdict (`passed` None, `verdict` says why)
    without an input the rule needs: both sections (else it is not a whole exam), and the
    contraindicated choices of every question (`kinki_known`; without them 0 selected would be a guess)."""
    line = general_line(year)
    if not required_total or not general_total:
        return {
            "passed": None,
            "verdict": "none (not a whole exam: the rule needs the required and general blocks)",
            "general_line": line,
        }
    scores_pass = (
        required_points >= REQUIRED_LINE * required_total - 1e-9 and general_points >= line * general_total - 1e-9
    )
    if not kinki_known:
        if not scores_pass:  # failing on points needs no contraindication data
            return {"passed": False, "verdict": "FAIL (on points; no kinki data)", "general_line": line}
        return {
            "passed": None,
            "verdict": "unknown (no kinki data: the contraindicated choices the rule counts are not in this data)",
            "general_line": line,
        }
    ok = scores_pass and kinki < KINKI_LIMIT
    return {"passed": ok, "verdict": "PASS" if ok else "FAIL", "general_line": line}


EXAM = ExamKind(
    name="medical",
    title="医師国家試験",
    knowledge="医学知識",
    year_offset=1906,
    required_blocks=("B", "E"),
    pass_rule=pass_fail,
    pass_source="MHLW 医師国家試験の合格基準: required ≥ 80 %, general+clinical ≥ the year's line, "
    "fewer than 4 contraindicated choices",
    accept_any=frozenset({"116A71"}),  # MHLW: every answer counts as correct (the reference scorer's rule)
)
