"""歯科医師国家試験 (the national dental licensing exam): the 116th was held in 2023."""

from jmed.exams import ExamKind

# jmed knows no pass rule for it: the dental exam's lines (領域A/B/C, 必修) are not in any dataset here.
EXAM = ExamKind(name="dental", title="歯科医師国家試験", knowledge="歯科医学知識", year_offset=1907)
