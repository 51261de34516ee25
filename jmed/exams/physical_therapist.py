"""理学療法士国家試験 (the national physical therapist exam): the 59th was held in 2024 (KokushiMD-10's
理学 files). No year_offset (the 59th + 1965): `ExamKind.year` maps only exam numbers
100-199 (the medical, dental and pharmacist exams'), so an offset here would misdate those."""

from jmed.exams import ExamKind

# No pass rule yet. MHLW's rule: total points ≥ the year's line and 実地問題 (3 points each) ≥ theirs, e.g.
# 2024 (59th) 168/279 and 43/120 (ishiyaku.co.jp). The 実地 questions are numbered questions within each
# session, not whole blocks, which `ExamKind.required_blocks` cannot express; and KokushiMD-10's scorer
# (rigaku_score: [168, 43] every year, split at question 80) compares its first part, not the total.
EXAM = ExamKind(name="physical_therapist", title="理学療法士国家試験", knowledge="理学療法学知識")
