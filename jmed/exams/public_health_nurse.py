"""保健師国家試験 (the national public health nursing exam): the 110th was held in 2024 (KokushiMD-10's
保健 files)."""

from jmed.exams import ExamKind
from jmed.exams.midwife import total_line_rule

# Total points ≥ the year's line (一般 1 point, 状況設定 2 points each). KokushiMD-10's scorer
# (calculate_scores.py, hoken_score) uses 87 for every year; MHLW's published lines differ in some:
# 2020 (106th) 87/144 and 2021 (107th) 86/142 (forest-life-japan.com's table of MHLW's lines), 2022
# (108th) 86/142 (ikuseikai.org quoting mhlw.go.jp .../successlist/2022/siken03_04_05/about.html),
# 2024 (110th) 87/144 (job-medley via news.goo.ne.jp, from MHLW's announcement). Other years (2023,
# the 109th, not found): the scorer's 87 of the exam's 145 points (2019's line, 87/145, kango.mynavi.jp).
LINES = {2020: (87, 144), 2021: (86, 142), 2022: (86, 142), 2024: (87, 144)}

EXAM = ExamKind(
    name="public_health_nurse",
    title="保健師国家試験",
    knowledge="公衆衛生看護学知識",
    year_offset=1914,
    pass_rule=total_line_rule(LINES, (87, 145)),
    pass_source="MHLW 保健師国家試験の合格基準 (total points ≥ the year's line; 2020-2022, 2024 as quoted by "
    "secondary pages), else KokushiMD-10 calculate_scores.py (hoken_score): 87 of 145",
)
