"""Questions from no national exam (JMMLU, MedQA, PubMedQA, …): no years, no sections, no pass rule."""

from jmed.exams import ExamKind

EXAM = ExamKind(name="other", title="医学の試験", knowledge="医学知識")
