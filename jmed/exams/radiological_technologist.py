"""診療放射線技師国家試験 (the national radiological technologist exam): the 76th was held in 2024
(KokushiMD-10's 診療 files). No year_offset (the 76th + 1948): `ExamKind.year` maps only exam numbers
100-199 (the medical, dental and pharmacist exams'), so an offset here would misdate those."""

from jmed.exams import ExamKind
from jmed.exams.midwife import total_line_rule

# 120 of 200 points (1 point each): KokushiMD-10's scorer (calculate_scores.py, shinryo_score) for every
# year, and MHLW's line (the 68th, 2016: ikuseikai.org quoting MHLW). MHLW's rule also fails a candidate
# with more than one subject at 0 points; neither KokushiMD-10's data nor its scorer has the subjects.
EXAM = ExamKind(
    name="radiological_technologist",
    title="診療放射線技師国家試験",
    knowledge="放射線技術学知識",
    pass_rule=total_line_rule({}, (120, 200)),
    pass_source="KokushiMD-10 calculate_scores.py (shinryo_score): total ≥ 120 of 200 (MHLW's line; its "
    "per-subject zero-score condition is not checked), as a fraction of the points scored",
)
