"""助産師国家試験 (the national midwifery exam): the 107th was held in 2024 (KokushiMD-10's 助産 files).
Also home of `total_line_rule`, the pass rule of the exams judged on their total points alone."""

from jmed.exams import ExamKind


def total_line_rule(lines: dict[int, tuple[float, float]], default: tuple[float, float]):
    """A pass rule on the total points alone: at least need/full of the points of the questions scored,
    (need, full) the year's line in `lines` or `default`. On a whole exam this is the published line in
    points; a question left out (採点除外) leaves the fraction, as the published lines for that case do.
    The required/general split the caller makes does not matter: both are added up."""

    def rule(
        required_points, required_total, general_points, general_total, kinki=0, year=None, kinki_known=True
    ) -> dict:
        need, full = lines.get(year, default)
        line = need / full
        points, total = required_points + general_points, required_total + general_total
        if not total:
            return {"passed": None, "verdict": "none (no scored points)", "general_line": line}
        ok = points >= line * total - 1e-9
        return {"passed": ok, "verdict": "PASS" if ok else "FAIL", "general_line": line}

    return rule


# 87 of 145 points (一般 75 × 1 + 状況設定 35 × 2) every year: KokushiMD-10's scorer (calculate_scores.py,
# jyosan_score: total ≥ 87, 2020-2024), and MHLW's published line for the 100th (2017) and the 105th
# (2022) exams (ikuseikai.org quoting mhlw.go.jp .../successlist/2022/siken03_04_05/about.html) and the
# 102nd (2019; kango.mynavi.jp).
EXAM = ExamKind(
    name="midwife",
    title="助産師国家試験",
    knowledge="助産学知識",
    year_offset=1917,
    pass_rule=total_line_rule({}, (87, 145)),
    pass_source="KokushiMD-10 calculate_scores.py (jyosan_score): total ≥ 87 (of 145 points, MHLW's line "
    "for 2017, 2019 and 2022), as a fraction of the points scored",
)
