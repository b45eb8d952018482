"""Chapter 19: grade the target (solutions by default) and check that every declared mistake fails."""

from tests.exercises.grading import chapter_tests

test_task, test_mistake = chapter_tests("19")
